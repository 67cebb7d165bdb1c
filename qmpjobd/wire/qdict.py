"""The iteration orders of QEMU's dictionaries, for printing objects and
naming members the way QEMU does.

QEMU holds JSON objects in a QDict: a hash table of 512 buckets, each a list
with the newest member first, iterated (and printed) bucket by bucket. So an
object QEMU echoes back (a request's ``id``), a reply it builds, or a block
node's ``json:`` filename comes out in that order, not in the order it was
written; :func:`qemu_order` puts a value's objects in that order, given the
order QEMU inserted their members in.

QEMU checks a request's top-level members while iterating its QDict
(:func:`qdict_order`), and reports the first unexpected argument while
iterating a GLib hash table built from the leftover members of that QDict
(:func:`first_unexpected`). A client that sends two bad members gets the one
that comes first in those orders.

Part of :mod:`qmpjobd.wire`: no I/O, nothing of jobs or QMP; the one home of
these orders for the whole daemon.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_QDICT_BUCKETS = 512
# GLib's table of primes for hash tables of 2**shift slots.
_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749)
_MIN_SHIFT = 3


def _qdict_hash(key: str) -> int:
    # QEMU hashes the key's modified UTF-8 bytes (NUL as C0 80).
    raw = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, byte in enumerate(raw):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict_bucket(key: str) -> int:
    """The bucket of QEMU's QDict that *key* lands in."""
    return _qdict_hash(key) % _QDICT_BUCKETS


def qdict_order(keys: Iterable[str]) -> list[str]:
    """The order in which QEMU iterates a QDict whose keys were inserted in *keys* order."""
    buckets: dict[int, list[str]] = {}
    for key in keys:
        buckets.setdefault(_qdict_hash(key) % _QDICT_BUCKETS, []).insert(0, key)
    return [key for index in sorted(buckets) for key in buckets[index]]


def _g_str_hash(key: str) -> int:
    value = 5381
    for byte in key.encode("utf-8", "surrogatepass"):
        signed = byte - 256 if byte >= 128 else byte
        value = (value * 33 + signed) & 0xFFFFFFFF
    return value


def ghash_order(keys: Iterable[str]) -> list[str]:
    """The order in which GLib iterates a string-keyed hash table filled in *keys* order."""
    items = list(keys)
    shift = _MIN_SHIFT
    # GLib grows the table once it is more than ~15/16 full.
    while (1 << shift) <= len(items) + len(items) // 16:
        shift += 1
    size = 1 << shift
    slots: list[str | None] = [None] * size
    for key in items:
        hashed = _g_str_hash(key)
        if hashed < 2:
            hashed = 2
        index = (hashed * 11) % _PRIME_MOD[shift]
        step = 0
        while slots[index] is not None:
            step += 1
            index = (index + step) & (size - 1)
        slots[index] = key
    return [key for key in slots if key is not None]


def first_unexpected(members: Iterable[str], unexpected: Iterable[str]) -> str:
    """The member QEMU's input visitor names in "Parameter '%s' is unexpected".

    *members* are all members of the object, in the order the client sent
    them; *unexpected* the ones the schema does not know. QEMU fills its table
    with every member and removes the known ones as it visits them, so the
    known ones decide where the others landed.
    """
    wanted = set(unexpected)
    return next(key for key in ghash_order(qdict_order(members)) if key in wanted)


def qemu_order(value: Any) -> Any:
    """``value`` with every dict's members in QEMU's printing order.

    Each dict's own order is taken as QEMU's insertion order: members print
    bucket by bucket, and within a bucket the last inserted first (QEMU's
    ``QLIST_INSERT_HEAD``). Dicts and lists are copied, other values
    returned as they are. Works without recursion: QEMU accepts values
    nested 1024 deep.
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
            new_dict = {key: item[key] for key in sorted(reversed(list(item)), key=qdict_bucket)}
            container[slot] = new_dict
            work.extend((new_dict, key) for key in new_dict)
        elif isinstance(item, list):
            new_list = list(item)
            container[slot] = new_list
            work.extend((new_list, i) for i in range(len(new_list)))
    return root[0]
