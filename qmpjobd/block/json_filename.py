"""QEMU's ``json:{...}`` pseudo-filenames, for nodes no plain filename describes.

QEMU prints the node's full open options with its compact JSON writer
(``{"a": 1, "b": 2}``), members in its dictionary order
(:func:`qmpjobd.wire.qdict.qemu_order`).

Imports only :mod:`qmpjobd.wire.qdict` of the wire layer.
"""

from __future__ import annotations

import json
from typing import Any

from ..wire.qdict import qemu_order


def json_filename(options: dict[str, Any]) -> str:
    """``json:`` and *options* printed as QEMU prints them."""
    return "json:" + json.dumps(qemu_order(options), separators=(", ", ": "))
