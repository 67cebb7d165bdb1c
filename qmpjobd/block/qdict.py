"""QEMU's dictionary member order, for outputs that must match byte for byte.

QEMU keeps QMP objects in a hash table of 512 buckets and serialises them
bucket by bucket, so the member order of its replies (and of the ``json:``
pseudo-filenames of block nodes) follows the hash of each key. We rebuild
that order: callers build dicts in QAPI declaration order, and
:func:`qemu_order` sorts members by bucket, keeping the given order for keys
that share a bucket (which is what 7.2 showed for the colliding
``inject-error.N.*`` keys).

Imports only the leaf :mod:`qmpjobd.qdict`.
"""

from __future__ import annotations

import json
from typing import Any

from ..qdict import qdict_bucket

bucket = qdict_bucket


def qemu_order(value: Any) -> Any:
    """Return ``value`` with every dict in it reordered like QEMU would print it."""
    if isinstance(value, dict):
        keys = sorted(value, key=bucket)  # sorted() is stable: ties keep the given order
        return {k: qemu_order(value[k]) for k in keys}
    if isinstance(value, list):
        return [qemu_order(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Serialise like QEMU's compact (non-pretty) JSON writer: ``{"a": 1, "b": 2}``."""
    return json.dumps(qemu_order(value), separators=(", ", ": "))
