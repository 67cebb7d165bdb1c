"""The member order QEMU prints a JSON object in.

QEMU holds JSON objects in a QDict: a hash table of 512 buckets, each a list
with the newest member first, printed bucket by bucket. So an object QEMU
echoes back (a request's ``id``, say) comes out in that order, not in the
order the client wrote it. :func:`qemu_order` puts a decoded value's objects
in that order, so that :func:`qmpjobd.wire.encode` prints them as QEMU does.

Part of :mod:`qmpjobd.wire`: no I/O, nothing of jobs or QMP.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["qemu_order"]

_BUCKETS: Final = 512
_MASK: Final = 0xFFFFFFFF


def _bucket(key: str) -> int:
    # QDict's hash (from TDB), on the key's modified UTF-8 bytes.
    name = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    value = (0x238F13AF * len(name)) & _MASK
    for i, byte in enumerate(name):
        value = (value + (byte << (i * 5 % 24))) & _MASK
    return ((1103515243 * value + 12345) & _MASK) % _BUCKETS


def qemu_order(value: object) -> object:
    """``value`` with every dict's members in QEMU's printing order.

    Dicts and lists are copied, other values returned as they are. Works
    without recursion: QEMU accepts values nested 1024 deep.
    """
    root: list[object] = [value]
    # Slots whose content is still an original value: new containers are
    # made with their members in place, then each member slot is replaced in
    # turn (assigning to an existing key keeps a dict's order).
    work: list[tuple[Any, Any]] = [(root, 0)]
    while work:
        container, slot = work.pop()
        item = container[slot]
        if isinstance(item, dict):
            # Newest first within a bucket: sort a reversed list, stably.
            new_dict = {key: item[key] for key in sorted(reversed(list(item)), key=_bucket)}
            container[slot] = new_dict
            work.extend((new_dict, key) for key in new_dict)
        elif isinstance(item, list):
            new_list = list(item)
            container[slot] = new_list
            work.extend((new_list, i) for i in range(len(new_list)))
    return root[0]
