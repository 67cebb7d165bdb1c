"""qmpjobd's wire codec, sans I/O: bytes in, objects out, and back.

* :class:`Decoder` reads a connection's input the way QEMU 7.2 does: framed
  by JSON value boundaries (not newlines), with QEMU's extensions, limits,
  error texts and resynchronisation; it yields decoded values and
  :class:`ParseError` items.
* :func:`encode` writes one message the way QEMU does: compact, ASCII,
  ``%.17g`` floats, ending in CRLF; :func:`qemu_order` gives a value the
  member order QEMU prints objects in (:mod:`qmpjobd.wire.qdict` holds all
  of QEMU's dictionary orders).

The layer knows JSON and QEMU's reading of it, nothing more: whether a value
is a valid QMP request is for :mod:`qmpjobd.protocol`. It must not import
asyncio, sockets, or anything of jobs, block, commands or session; it imports
nothing of ours outside this package.
"""

from qmpjobd.wire.decoder import Decoder
from qmpjobd.wire.encoder import encode
from qmpjobd.wire.qdict import qemu_order
from qmpjobd.wire.qemu_json import ParseError

__all__ = ["Decoder", "ParseError", "encode", "qemu_order"]
