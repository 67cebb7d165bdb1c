"""The member order QEMU prints a JSON object in.

QEMU holds JSON objects in a QDict: a hash table of 512 buckets, each a list
with the newest member first, printed bucket by bucket. So an object QEMU
echoes back (a request's ``id``, say) comes out in that order, not in the
order the client wrote it. :func:`qemu_order` puts a decoded value's objects
in that order, so that :func:`qmpjobd.wire.encode` prints them as QEMU does.

Part of :mod:`qmpjobd.wire`: no I/O, nothing of jobs or QMP.
"""

from __future__ import annotations

from ..qdict import qemu_order

__all__ = ["qemu_order"]
