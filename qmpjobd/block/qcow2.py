"""The qcow2 image format (versions 2 and 3): open, read, write, create.

A synchronous, file-based implementation of the qcow2 format as the public
qcow2 specification describes it, meant to run in the block layer's thread
pool: one :class:`Qcow2Image` per open image, every method blocking. A
``qcow2`` block node wraps one image and its ``file`` child's host file
(:class:`HostFile`; :class:`FdHostFile` for a plain descriptor).

Layers: a cluster that is not allocated in this image reads through the
caller's *backing_read* callback (zeros without one), so a node can fall
through to its backing node. A node whose backing node is asynchronous does
not block in the callback: for a read it asks :meth:`Qcow2Image.block_status`
and reads ``UNALLOCATED`` extents from the backing node itself; for a write it
asks :meth:`Qcow2Image.cow_ranges` which guest ranges the write will copy
from the backing image, reads them ahead, and passes a callback that serves
exactly those ranges (holding its write lock across both calls).

Also: write-zeroes (the v3 zero flag), discard, growing the virtual size,
rewriting the backing file name and format, QEMU's ``format-specific`` info.
Like QEMU, a guest write that would land on metadata sets the corrupt bit and
fails with EIO; the image is read-only from then on.

Crash consistency: a refcount is increased and made durable before anything
refers to the cluster; data reaches the disk before the L2 entry that points
to it; an L2 entry is dropped (and made durable) before the cluster's
refcount goes down. A crash then leaves leaked clusters at most. With lazy
refcounts the image is marked dirty before the first deferred refcount update
and marked clean on :meth:`Qcow2Image.close`; a dirty image opened read-write
gets its refcounts repaired first.

Not supported (refused with an error): encryption, external data files,
extended L2 entries, zstd compression, writing images with internal snapshots.

Must not import: jobs, sockets, JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno as errno_mod
import os
import struct
import sys
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from ..errors import QMPError
from .punch import punch_hole

__all__ = [
    "Allocation",
    "BackingRead",
    "Extent",
    "FdHostFile",
    "HostFile",
    "Qcow2Error",
    "Qcow2Header",
    "Qcow2Image",
    "create",
    "create_path",
]

MAGIC = b"QFI\xfb"
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
MAX_BACKING_NAME = 1023
SECTOR = 512

# Header extension types.
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# Feature bits.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

#: The feature name table this module writes: (type, bit, name).
FEATURE_NAMES: tuple[tuple[int, int, str], ...] = (
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
)

# Table entry bits.
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00

_HDR_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes
_HDR_V3 = struct.Struct(">QQQII")  # 32 more bytes, then compression_type at 104
_V3_HEADER_LENGTH = 112
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_LITTLE = sys.byteorder == "little"

#: ``backing_read(offset, length)`` returns exactly ``length`` bytes of the
#: backing image at ``offset`` (zeros past its end).
BackingRead = Callable[[int, int], bytes]


class Qcow2Error(QMPError):
    """The image cannot be opened, created or changed as asked (QEMU's texts)."""


def _eio(what: str) -> OSError:
    return OSError(errno_mod.EIO, f"{os.strerror(errno_mod.EIO)}: {what}")


# -- host file ----------------------------------------------------------------


class HostFile(Protocol):
    """The protocol layer below the image: a byte-addressed file."""

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; zeros past the end of the file."""
        ...

    def pwrite(self, offset: int, data: bytes) -> None: ...

    def size(self) -> int: ...

    def truncate(self, size: int) -> None: ...

    def sync(self) -> None:
        """Make everything written so far durable."""
        ...


class FdHostFile:
    """A :class:`HostFile` on a file descriptor (closed by :meth:`close` if owned)."""

    def __init__(self, fd: int, *, owned: bool = False, no_flush: bool = False) -> None:
        self.fd = fd
        self.owned = owned
        self.no_flush = no_flush

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> FdHostFile:
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        return cls(os.open(path, flags), owned=True)

    def pread(self, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        done = 0
        while done < length:
            chunk = os.pread(self.fd, length - done, offset + done)
            if not chunk:
                parts.append(bytes(length - done))
                break
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def pwrite(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def sync(self) -> None:
        if not self.no_flush:
            os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """Give ``length`` bytes at ``offset`` back to the file system (a hole);
        where it cannot, nothing happens."""
        with contextlib.suppress(OSError):
            punch_hole(self.fd, offset, length)

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


# -- tables -------------------------------------------------------------------


def _be_array(data: bytes) -> array[int]:
    table = array("Q", data)
    if _LITTLE:
        table.byteswap()
    return table


def _be_bytes(table: array[int], start: int = 0, end: int | None = None) -> bytes:
    part = table[start:end]
    if _LITTLE:
        part.byteswap()
    return part.tobytes()


def _rc_get(block: bytearray, index: int, bits: int) -> int:
    if bits >= 8:
        width = bits >> 3
        return int.from_bytes(block[index * width : (index + 1) * width], "big")
    per_byte = 8 // bits
    shift = (index % per_byte) * bits
    return (block[index // per_byte] >> shift) & ((1 << bits) - 1)


def _rc_set(block: bytearray, index: int, bits: int, value: int) -> None:
    if bits >= 8:
        width = bits >> 3
        block[index * width : (index + 1) * width] = value.to_bytes(width, "big")
        return
    per_byte = 8 // bits
    shift = (index % per_byte) * bits
    mask = ((1 << bits) - 1) << shift
    pos = index // per_byte
    block[pos] = (block[pos] & ~mask) | (value << shift)


def _rc_first_free(block: bytearray, start: int, bits: int) -> int:
    """Index of the first zero refcount at or after ``start``, or -1."""
    entries = len(block) * 8 // bits
    if bits >= 8:
        width = bits >> 3
        zero = bytes(width)
        pos = start * width
        while True:
            pos = block.find(zero, pos)
            if pos < 0:
                return -1
            if pos % width == 0:
                return pos // width
            pos += width - pos % width
    for index in range(start, entries):
        if _rc_get(block, index, bits) == 0:
            return index
    return -1


def _clusters(nbytes: int, cluster_size: int) -> int:
    return -(-nbytes // cluster_size)


# -- header -------------------------------------------------------------------


@dataclass
class Qcow2Header:
    """Every field of a qcow2 header, and its extensions."""

    version: int
    cluster_bits: int
    size: int
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = _V3_HEADER_LENGTH
    compression_type: int = 0
    backing_file_offset: int = 0
    backing_file_size: int = 0
    backing_file: str | None = None
    backing_format: str | None = None
    #: (type, bit) -> name, from the feature name table extension
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)
    #: extensions this module does not interpret, kept when the header is rewritten
    unknown_extensions: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @classmethod
    def parse(cls, data: bytes) -> Qcow2Header:
        """Parse the first cluster of an image (or at least its header)."""
        if len(data) < _HDR_V2.size or data[:4] != MAGIC:
            raise Qcow2Error("Image is not in qcow2 format")
        (
            _magic,
            version,
            backing_off,
            backing_size,
            cluster_bits,
            size,
            crypt,
            l1_size,
            l1_off,
            rt_off,
            rt_clusters,
            nb_snap,
            snap_off,
        ) = _HDR_V2.unpack_from(data)
        if version not in (2, 3):
            raise Qcow2Error(f"Unsupported qcow2 version {version}")
        if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
            raise Qcow2Error(f"Unsupported cluster size: 2^{cluster_bits}")
        hdr = cls(
            version=version,
            cluster_bits=cluster_bits,
            size=size,
            crypt_method=crypt,
            l1_size=l1_size,
            l1_table_offset=l1_off,
            refcount_table_offset=rt_off,
            refcount_table_clusters=rt_clusters,
            nb_snapshots=nb_snap,
            snapshots_offset=snap_off,
            backing_file_offset=backing_off,
            backing_file_size=backing_size,
            header_length=_HDR_V2.size,
        )
        cluster_size = 1 << cluster_bits
        if version == 3:
            if len(data) < _HDR_V2.size + _HDR_V3.size:
                raise Qcow2Error("qcow2 header too short")
            (
                hdr.incompatible_features,
                hdr.compatible_features,
                hdr.autoclear_features,
                hdr.refcount_order,
                hdr.header_length,
            ) = _HDR_V3.unpack_from(data, _HDR_V2.size)
            if hdr.header_length < _HDR_V2.size + _HDR_V3.size:
                raise Qcow2Error("qcow2 header too short")
            if hdr.header_length > cluster_size:
                raise Qcow2Error("qcow2 header exceeds cluster size")
            if hdr.header_length > 104 and len(data) > 104:
                hdr.compression_type = data[104]
        if hdr.refcount_order > 6:
            raise Qcow2Error("Reference count entry width too large; may not exceed 64 bits")
        data = data[:cluster_size]
        ext_end = backing_off if backing_off and backing_off < cluster_size else cluster_size
        pos = hdr.header_length
        while pos + 8 <= ext_end:
            ext_type, ext_len = struct.unpack_from(">II", data, pos)
            pos += 8
            if ext_type == EXT_END:
                break
            if pos + ext_len > ext_end:
                raise Qcow2Error("Invalid extension length")
            payload = bytes(data[pos : pos + ext_len])
            pos += (ext_len + 7) & ~7
            if ext_type == EXT_BACKING_FORMAT:
                hdr.backing_format = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif ext_type == EXT_FEATURE_TABLE:
                for off in range(0, len(payload) - 47, 48):
                    kind, bit = payload[off], payload[off + 1]
                    name = payload[off + 2 : off + 48].split(b"\0", 1)[0]
                    hdr.feature_names[(kind, bit)] = name.decode("utf-8", "replace")
            else:
                hdr.unknown_extensions.append((ext_type, payload))
        if backing_off:
            if backing_size > MAX_BACKING_NAME or backing_off + backing_size > cluster_size:
                raise Qcow2Error("Backing file name too long")
            raw = data[backing_off : backing_off + backing_size]
            hdr.backing_file = bytes(raw).decode("utf-8", "replace")
        return hdr

    def pack(self) -> bytes:
        """The header cluster's contents: header, extensions, backing file name.

        :raise Qcow2Error: it does not fit into one cluster.
        """
        cluster_size = self.cluster_size
        exts = bytearray()

        def add(ext_type: int, payload: bytes) -> None:
            exts.extend(struct.pack(">II", ext_type, len(payload)))
            exts.extend(payload)
            exts.extend(bytes(-len(payload) % 8))

        if self.backing_format is not None:
            add(EXT_BACKING_FORMAT, self.backing_format.encode())
        for ext_type, payload in self.unknown_extensions:
            add(ext_type, payload)
        base_len = _V3_HEADER_LENGTH if self.version == 3 else _HDR_V2.size
        name = self.backing_file.encode() if self.backing_file is not None else b""
        if self.version == 3:
            table = b"".join(
                struct.pack(">BB46s", kind, bit, text.encode()) for kind, bit, text in FEATURE_NAMES
            )
            # Like QEMU, leave the table out when it does not fit (tiny clusters).
            if base_len + len(exts) + 8 + len(table) + 8 + len(name) <= cluster_size:
                add(EXT_FEATURE_TABLE, table)
        exts.extend(bytes(8))  # end of extensions
        backing_off = base_len + len(exts) if self.backing_file is not None else 0
        if len(name) > MAX_BACKING_NAME or base_len + len(exts) + len(name) > cluster_size:
            raise Qcow2Error("Header does not fit into one cluster (backing file name too long)")
        out = bytearray(
            _HDR_V2.pack(
                MAGIC,
                self.version,
                backing_off,
                len(name) if self.backing_file is not None else 0,
                self.cluster_bits,
                self.size,
                self.crypt_method,
                self.l1_size,
                self.l1_table_offset,
                self.refcount_table_offset,
                self.refcount_table_clusters,
                self.nb_snapshots,
                self.snapshots_offset,
            )
        )
        if self.version == 3:
            out += _HDR_V3.pack(
                self.incompatible_features,
                self.compatible_features,
                self.autoclear_features,
                self.refcount_order,
                _V3_HEADER_LENGTH,
            )
            out += bytes([self.compression_type]) + bytes(7)
        out += exts
        out += name
        return bytes(out)


# -- block status -------------------------------------------------------------


class Allocation(Enum):
    """What a guest range is in this layer."""

    #: data stored in this image (``host_offset`` set unless compressed)
    DATA = "data"
    #: reads as zeros because of this image (v3 zero flag, or discarded without backing)
    ZERO = "zero"
    #: not in this image: reads from the backing image, or zeros without one
    UNALLOCATED = "unallocated"


@dataclass(frozen=True)
class Extent:
    """A run of guest bytes of one :class:`Allocation` kind."""

    kind: Allocation
    length: int
    #: where the run's first byte lies in the image file, for uncompressed data
    #: (and for preallocated zero clusters); None otherwise
    host_offset: int | None = None


# -- the image ----------------------------------------------------------------

_L2_CACHE_TABLES = 32
_RB_CACHE_BLOCKS = 64


@dataclass
class _Piece:
    """One cluster's share of a write."""

    guest: int  # guest offset of the cluster
    start: int  # first written byte inside the cluster
    data: bytes  # bytes written at ``start``
    index: int  # index in the L2 table


class Qcow2Image:
    """One open qcow2 image. Blocking; serialised by an internal lock.

    Open with :meth:`open` or :meth:`open_path`; create with :func:`create`.
    I/O errors of the host file surface as :class:`OSError`; metadata that
    points outside the image raises ``OSError(EIO)``.
    """

    def __init__(self, file: HostFile, header: Qcow2Header, *, read_only: bool) -> None:
        self.file = file
        self.header = header
        self.read_only = read_only
        self.closed = False
        self._lock = threading.RLock()
        self._cs = header.cluster_size
        self._cb = header.cluster_bits
        self._l2_bits = self._cb - 3
        self._l2_entries = 1 << self._l2_bits
        self._rc_bits = header.refcount_bits
        self._rc_max = (1 << self._rc_bits) - 1
        self._rb_entries = self._cs * 8 // self._rc_bits
        csize_shift = 62 - (self._cb - 8)
        self._coff_mask = (1 << csize_shift) - 1
        self._csize_shift = csize_shift
        self._csize_mask = (1 << (self._cb - 8)) - 1
        self._l1 = array("Q")
        self._rt = array("Q")
        self._l2_cache: OrderedDict[int, array[int]] = OrderedDict()
        self._rb_cache: OrderedDict[int, bytearray] = OrderedDict()
        self._rb_dirty: set[int] = set()
        self._free_hint = 0
        self._reserved: set[int] = set()
        self._file_size = file.size()
        self._last_compressed: tuple[int, bytes] | None = None
        #: bumped whenever a metadata table moves or one is added
        self._meta_version = 0
        self._meta: tuple[int, dict[int, str]] | None = None

    # -- opening ----------------------------------------------------------

    @classmethod
    def open(cls, file: HostFile, *, read_only: bool = False) -> Qcow2Image:
        """Open the image in ``file``.

        :raise Qcow2Error: not a qcow2 image, or one this module cannot handle.
        """
        start = file.pread(0, _HDR_V2.size)
        cluster_bits = _U32.unpack_from(start, 20)[0] if start[:4] == MAGIC else 0
        length = 1 << min(max(cluster_bits, MIN_CLUSTER_BITS), MAX_CLUSTER_BITS)
        header = Qcow2Header.parse(file.pread(0, length))
        cls._check_supported(header, read_only)
        image = cls(file, header, read_only=read_only)
        image._load_tables()
        if not read_only:
            image._prepare_for_writing()
        return image

    @classmethod
    def open_path(
        cls, path: str | os.PathLike[str], *, read_only: bool = False, no_flush: bool = False
    ) -> Qcow2Image:
        """Open the image file at ``path``; :meth:`close` closes the file too."""
        host = FdHostFile.open(path, read_only=read_only)
        host.no_flush = no_flush
        try:
            return cls.open(host, read_only=read_only)
        except BaseException:
            host.close()
            raise

    @staticmethod
    def _check_supported(hdr: Qcow2Header, read_only: bool) -> None:
        unsupported = hdr.incompatible_features & ~(
            INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION
        )
        if unsupported:
            names = []
            for bit in range(64):
                if unsupported & (1 << bit):
                    name = hdr.feature_names.get((0, bit))
                    if name is None:
                        name = {2: "external data file", 4: "extended L2 entries"}.get(bit)
                    if name is not None:
                        names.append(name)
                        unsupported &= ~(1 << bit)
            if unsupported:
                names.append(f"Unknown incompatible feature: {unsupported:x}")
            raise Qcow2Error("Unsupported qcow2 feature(s): " + ", ".join(names))
        compression_bit = bool(hdr.incompatible_features & INCOMPAT_COMPRESSION)
        if hdr.compression_type > 1:
            raise Qcow2Error(f"qcow2: unknown compression type: {hdr.compression_type}")
        if hdr.compression_type == 0 and compression_bit:
            raise Qcow2Error("qcow2: Compression type incompatible feature bit must not be set")
        if hdr.compression_type != 0 and not compression_bit:
            raise Qcow2Error("qcow2: Compression type incompatible feature bit must be set")
        if hdr.compression_type == 1:
            raise Qcow2Error("Unsupported qcow2 compression type: zstd (only zlib is supported)")
        if hdr.crypt_method:
            method = {1: "aes", 2: "luks"}.get(hdr.crypt_method)
            if method is None:
                raise Qcow2Error(f"Unsupported encryption method {hdr.crypt_method}")
            raise Qcow2Error(f"Encrypted qcow2 images are not supported (encryption: {method})")
        if not read_only and hdr.incompatible_features & INCOMPAT_CORRUPT:
            raise Qcow2Error("qcow2: Image is corrupt; cannot be opened read/write")
        if not read_only and hdr.nb_snapshots:
            raise Qcow2Error("qcow2 images with internal snapshots can only be opened read-only")
        cs = hdr.cluster_size
        if hdr.refcount_table_clusters == 0:
            raise Qcow2Error("Image does not contain a reference count table")
        if hdr.refcount_table_clusters * cs > MAX_REFTABLE_BYTES:
            raise Qcow2Error("Reference count table too large")
        if hdr.refcount_table_offset % cs or hdr.refcount_table_offset == 0:
            raise Qcow2Error("Invalid reference count table offset")
        if hdr.l1_size * 8 > MAX_L1_BYTES:
            raise Qcow2Error("Active L1 table too large")
        l2_span = cs * (cs // 8)
        if hdr.l1_size < _clusters(hdr.size, l2_span):
            raise Qcow2Error("L1 table is too small")
        if hdr.l1_size and hdr.l1_table_offset % cs:
            raise Qcow2Error("Invalid L1 table offset")

    def _load_tables(self) -> None:
        hdr = self.header
        rt_bytes = hdr.refcount_table_clusters * self._cs
        self._rt = _be_array(self.file.pread(hdr.refcount_table_offset, rt_bytes))
        if hdr.l1_size:
            self._l1 = _be_array(self.file.pread(hdr.l1_table_offset, hdr.l1_size * 8))
        else:
            self._l1 = array("Q")

    def _prepare_for_writing(self) -> None:
        hdr = self.header
        if hdr.autoclear_features:
            # Features this module does not maintain (bitmaps): their data
            # stops being valid once it writes, so their bits go first.
            self.file.pwrite(88, _U64.pack(0))
            self.file.sync()
            hdr.autoclear_features = 0
        if hdr.incompatible_features & INCOMPAT_DIRTY:
            self._repair_refcounts()
            self._set_dirty(False)

    # -- properties -------------------------------------------------------

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def size(self) -> int:
        """Virtual size in bytes."""
        return self.header.size

    @property
    def cluster_size(self) -> int:
        return self._cs

    @property
    def refcount_bits(self) -> int:
        return self._rc_bits

    @property
    def backing_file(self) -> str | None:
        return self.header.backing_file

    @property
    def backing_format(self) -> str | None:
        return self.header.backing_format

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.header.compatible_features & COMPAT_LAZY_REFCOUNTS)

    @property
    def dirty(self) -> bool:
        return bool(self.header.incompatible_features & INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.header.incompatible_features & INCOMPAT_CORRUPT)

    # -- checks -----------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if self.closed:
            raise OSError(errno_mod.EBADF, "image is closed")
        if offset < 0 or length < 0:
            raise OSError(errno_mod.EINVAL, os.strerror(errno_mod.EINVAL))
        if offset + length > self.header.size:
            raise OSError(errno_mod.EIO, "request beyond the end of the image")

    def _check_writable(self, offset: int, length: int) -> None:
        self._check_range(offset, length)
        if self.read_only:
            raise OSError(errno_mod.EROFS, "image is read-only")

    def _metadata_clusters(self) -> dict[int, str]:
        """Host clusters holding metadata, and what they hold."""
        if self._meta is not None and self._meta[0] == self._meta_version:
            return self._meta[1]
        hdr = self.header
        found: dict[int, str] = {0: "qcow2_header"}
        for i in range(_clusters(hdr.l1_size * 8, self._cs)):
            found[(hdr.l1_table_offset >> self._cb) + i] = "active L1 table"
        for i in range(hdr.refcount_table_clusters):
            found[(hdr.refcount_table_offset >> self._cb) + i] = "refcount table"
        for entry in self._rt:
            if entry & REFT_OFFSET_MASK:
                found[(entry & REFT_OFFSET_MASK) >> self._cb] = "refcount block"
        for entry in self._l1:
            if entry & L1E_OFFSET_MASK:
                found[(entry & L1E_OFFSET_MASK) >> self._cb] = "active L2 table"
        self._meta = (self._meta_version, found)
        return found

    def _check_host(self, host: int) -> None:
        """Refuse to write guest data over metadata; QEMU's corruption handling."""
        if host % self._cs:
            self._mark_corrupt(f"Cluster allocation offset {host:#x} unaligned")
        what = self._metadata_clusters().get(host >> self._cb)
        if what is not None:
            self._mark_corrupt(f"Preventing invalid write on metadata (overlaps with {what})")

    def _mark_corrupt(self, reason: str) -> None:
        """Set the corrupt bit, stop writing, fail the request with EIO."""
        features = self.header.incompatible_features | INCOMPAT_CORRUPT
        if self.header.version >= 3 and not self.corrupt:
            self.file.pwrite(72, _U64.pack(features))
            self.file.sync()
            self.header.incompatible_features = features
        self.read_only = True
        raise OSError(
            errno_mod.EIO,
            f"qcow2: Marking image as corrupt: {reason}; further corruption events will "
            "be suppressed",
        )

    # -- refcounts --------------------------------------------------------

    def _rb_load(self, offset: int) -> bytearray:
        block = self._rb_cache.get(offset)
        if block is None:
            if offset % self._cs:
                raise _eio(f"refcount block offset {offset:#x} is not cluster aligned")
            block = bytearray(self.file.pread(offset, self._cs))
            self._rb_cache[offset] = block
            while len(self._rb_cache) > _RB_CACHE_BLOCKS:
                old = next(iter(self._rb_cache))
                if old in self._rb_dirty:
                    self.file.pwrite(old, bytes(self._rb_cache[old]))
                    self._rb_dirty.discard(old)
                del self._rb_cache[old]
        else:
            self._rb_cache.move_to_end(offset)
        return block

    def get_refcount(self, cluster: int) -> int:
        """The refcount of host cluster number ``cluster``."""
        table, index = divmod(cluster, self._rb_entries)
        if table >= len(self._rt):
            return 0
        offset = self._rt[table] & REFT_OFFSET_MASK
        if not offset:
            return 0
        return _rc_get(self._rb_load(offset), index, self._rc_bits)

    def _update_refcount(self, cluster: int, delta: int) -> None:
        """Change a refcount in memory (the block must exist); marks its block dirty."""
        table, index = divmod(cluster, self._rb_entries)
        if not self._has_block(table):
            raise _eio(f"cluster {cluster} has no refcount block")
        offset = self._rt[table] & REFT_OFFSET_MASK
        block = self._rb_load(offset)
        value = _rc_get(block, index, self._rc_bits) + delta
        if value < 0 or value > self._rc_max:
            raise _eio(f"refcount of cluster {cluster} out of range ({value})")
        _rc_set(block, index, self._rc_bits, value)
        self._rb_dirty.add(offset)
        if value == 0 and cluster < self._free_hint:
            self._free_hint = cluster

    def _has_block(self, table: int) -> bool:
        return table < len(self._rt) and bool(self._rt[table] & REFT_OFFSET_MASK)

    def _write_refblocks(self) -> None:
        for offset in sorted(self._rb_dirty):
            self.file.pwrite(offset, bytes(self._rb_cache[offset]))
        self._rb_dirty.clear()

    def _commit_refcounts(self) -> None:
        """Make refcount changes durable before what refers to them (or defer them)."""
        if not self._rb_dirty:
            return
        if self.lazy_refcounts:
            self._set_dirty(True)
            return
        self._write_refblocks()
        self.file.sync()

    def _set_dirty(self, dirty: bool) -> None:
        if self.header.version < 3 or self.dirty == dirty:
            return
        features = self.header.incompatible_features
        features = features | INCOMPAT_DIRTY if dirty else features & ~INCOMPAT_DIRTY
        self.file.pwrite(72, _U64.pack(features))
        self.file.sync()
        self.header.incompatible_features = features

    def _find_free(self) -> int:
        """The first cluster number from the hint on with refcount 0."""
        cluster = max(self._free_hint, 1)
        while True:
            table, index = divmod(cluster, self._rb_entries)
            if not self._has_block(table):
                found = cluster
            else:
                block = self._rb_load(self._rt[table] & REFT_OFFSET_MASK)
                free = _rc_first_free(block, index, self._rc_bits)
                if free < 0:
                    cluster = (table + 1) * self._rb_entries
                    continue
                found = table * self._rb_entries + free
            if found in self._reserved:
                cluster = found + 1
                continue
            self._free_hint = found
            return found

    def _cluster_taken(self, cluster: int) -> bool:
        return cluster in self._reserved or self.get_refcount(cluster) != 0

    def _grow_file(self, end: int) -> None:
        if end > self._file_size:
            self.file.truncate(end)
            self._file_size = end

    def _alloc_cluster(self) -> int:
        """Allocate one cluster (refcount 1, not yet durable); its host offset."""
        while True:
            cluster = self._find_free()
            table = cluster // self._rb_entries
            if not self._has_block(table):
                self._make_refblock(table)
                continue
            self._grow_file((cluster + 1) * self._cs)
            self._update_refcount(cluster, 1)
            self._free_hint = cluster + 1
            return cluster * self._cs

    def _make_refblock(self, table: int) -> None:
        """Allocate the refcount block for refcount table entry ``table``."""
        if table >= len(self._rt):
            self._grow_reftable(table + 1)
            if self._has_block(table):
                return
        while True:
            cluster = self._find_free()
            home = cluster // self._rb_entries
            offset = cluster * self._cs
            if home == table:
                # The block describes itself.
                block = bytearray(self._cs)
                _rc_set(block, cluster % self._rb_entries, self._rc_bits, 1)
                self._write_new_refblock(table, offset, block)
                return
            if not self._has_block(home):
                self._make_refblock(home)
                continue
            self._grow_file(offset + self._cs)
            self._update_refcount(cluster, 1)
            self._write_refblocks()
            self.file.sync()
            self._write_new_refblock(table, offset, bytearray(self._cs))
            return

    def _write_new_refblock(self, table: int, offset: int, block: bytearray) -> None:
        self._grow_file(offset + self._cs)
        self.file.pwrite(offset, bytes(block))
        self.file.sync()
        self.file.pwrite(self.header.refcount_table_offset + table * 8, _U64.pack(offset))
        self.file.sync()
        self._rt[table] = offset
        self._meta_version += 1
        self._rb_cache[offset] = block

    def _grow_reftable(self, min_entries: int) -> None:
        """Move the refcount table to the end of the file with room for ``min_entries``."""
        cs = self._cs
        per_cluster = cs // 8
        start = _clusters(self._file_size, cs)
        old_len = len(self._rt)
        entries = max(min_entries, old_len + old_len // 2 + 1)
        new_blocks: list[int] = []
        while True:
            table_clusters = _clusters(entries * 8, cs)
            end = start + table_clusters + len(new_blocks)
            needed = [
                t
                for t in range(start // self._rb_entries, (end - 1) // self._rb_entries + 1)
                if not self._has_block(t)
            ]
            entries = max(entries, (needed[-1] + 1) if needed else 0)
            stable = len(needed) == len(new_blocks)
            new_blocks = needed
            if stable and _clusters(entries * 8, cs) == table_clusters:
                in_use = [c for c in range(start, end) if self._cluster_taken(c)]
                if not in_use:
                    break
                start = in_use[-1] + 1  # leaked clusters past the end of the file
        table_clusters = _clusters(entries * 8, cs)
        end = start + table_clusters + len(new_blocks)
        block_at = {t: (start + table_clusters + i) * cs for i, t in enumerate(new_blocks)}
        blocks = {t: bytearray(cs) for t in new_blocks}
        new_rt = array("Q", self._rt)
        new_rt.extend([0] * (table_clusters * per_cluster - old_len))
        for t, offset in block_at.items():
            new_rt[t] = offset
        self._grow_file(end * cs)
        for cluster in range(start, end):
            t, index = divmod(cluster, self._rb_entries)
            if t in blocks:
                _rc_set(blocks[t], index, self._rc_bits, 1)
            else:
                self._update_refcount(cluster, 1)
        for t, block in blocks.items():
            self.file.pwrite(block_at[t], bytes(block))
        self._write_refblocks()
        self.file.sync()
        new_offset = start * cs
        self.file.pwrite(new_offset, _be_bytes(new_rt))
        self.file.sync()
        old_offset = self.header.refcount_table_offset
        old_clusters = self.header.refcount_table_clusters
        self.file.pwrite(48, struct.pack(">QI", new_offset, table_clusters))
        self.file.sync()
        self.header.refcount_table_offset = new_offset
        self.header.refcount_table_clusters = table_clusters
        self._rt = new_rt
        self._meta_version += 1
        for t, block in blocks.items():
            self._rb_cache[block_at[t]] = block
        for i in range(old_clusters):
            self._update_refcount(old_offset // cs + i, -1)
        self._commit_refcounts()

    def _free_clusters(self, clusters: list[int]) -> None:
        """Drop references whose L2 entries are gone (and durable)."""
        for cluster in clusters:
            self._update_refcount(cluster, -1)
        if not self.lazy_refcounts:
            self._write_refblocks()

    def _compressed_span(self, entry: int) -> tuple[int, int]:
        """(host offset, byte count) of a compressed cluster's data."""
        offset = entry & self._coff_mask
        sectors = ((entry >> self._csize_shift) & self._csize_mask) + 1
        return offset, sectors * SECTOR - (offset & (SECTOR - 1))

    def _compressed_clusters(self, entry: int) -> list[int]:
        offset = (entry & self._coff_mask) & ~(SECTOR - 1)
        sectors = ((entry >> self._csize_shift) & self._csize_mask) + 1
        last = offset + sectors * SECTOR - 1
        return list(range(offset >> self._cb, (last >> self._cb) + 1))

    def _entry_clusters(self, entry: int) -> list[int]:
        """Host clusters an L2 entry holds a reference to."""
        if entry & OFLAG_COMPRESSED:
            return self._compressed_clusters(entry)
        offset = entry & L2E_OFFSET_MASK
        return [offset >> self._cb] if offset else []

    # -- repair -----------------------------------------------------------

    def _references(self) -> dict[int, int]:
        """How many references every host cluster has from the active metadata."""
        refs: dict[int, int] = {}
        cs = self._cs
        hdr = self.header

        def add_range(offset: int, nbytes: int) -> None:
            for cluster in range(offset >> self._cb, _clusters(offset + nbytes, cs)):
                refs[cluster] = refs.get(cluster, 0) + 1

        add_range(0, cs)
        add_range(hdr.refcount_table_offset, hdr.refcount_table_clusters * cs)
        if hdr.l1_size:
            add_range(hdr.l1_table_offset, hdr.l1_size * 8)
        for entry in self._rt:
            if entry & REFT_OFFSET_MASK:
                add_range(entry & REFT_OFFSET_MASK, cs)
        for l1_entry in self._l1:
            l2_offset = l1_entry & L1E_OFFSET_MASK
            if not l2_offset:
                continue
            add_range(l2_offset, cs)
            for entry in self._l2_load(l2_offset):
                for cluster in self._entry_clusters(entry):
                    refs[cluster] = refs.get(cluster, 0) + 1
        return refs

    def _repair_refcounts(self) -> None:
        """Raise every refcount to the references it has (after lazy refcounts)."""
        refs = self._references()
        self._reserved = set(refs)
        try:
            for cluster, count in sorted(refs.items()):
                have = self.get_refcount(cluster)
                if have < count:
                    table = cluster // self._rb_entries
                    if not self._has_block(table):
                        self._make_refblock(table)
                    self._update_refcount(cluster, min(count, self._rc_max) - have)
            self._write_refblocks()
            self.file.sync()
        finally:
            self._reserved = set()
        self._free_hint = 0

    # -- L2 tables --------------------------------------------------------

    def _l2_load(self, offset: int) -> array[int]:
        table = self._l2_cache.get(offset)
        if table is None:
            if offset % self._cs or offset + self._cs > max(self._file_size, self._cs):
                raise _eio(f"L2 table offset {offset:#x} invalid")
            table = _be_array(self.file.pread(offset, self._cs))
            self._l2_cache[offset] = table
            while len(self._l2_cache) > _L2_CACHE_TABLES:
                self._l2_cache.popitem(last=False)
        else:
            self._l2_cache.move_to_end(offset)
        return table

    def _l2_for(self, l1_index: int) -> tuple[int, array[int]] | None:
        if l1_index >= len(self._l1):
            return None
        offset = self._l1[l1_index] & L1E_OFFSET_MASK
        if not offset:
            return None
        return offset, self._l2_load(offset)

    def _l2_writable(self, l1_index: int) -> tuple[int, array[int]]:
        """The L2 table of ``l1_index``, allocated first if needed."""
        entry = self._l1[l1_index]
        offset = entry & L1E_OFFSET_MASK
        if offset:
            if not entry & OFLAG_COPIED:
                raise Qcow2Error("Cannot write to an L2 table shared with a snapshot")
            return offset, self._l2_load(offset)
        offset = self._alloc_cluster()
        self._commit_refcounts()
        table = array("Q", bytes(self._cs))
        self.file.pwrite(offset, bytes(self._cs))
        self.file.sync()
        self.file.pwrite(
            self.header.l1_table_offset + l1_index * 8, _U64.pack(offset | OFLAG_COPIED)
        )
        self._l1[l1_index] = offset | OFLAG_COPIED
        self._meta_version += 1
        self._l2_cache[offset] = table
        return offset, table

    def _write_l2(self, offset: int, table: array[int], indexes: list[int]) -> None:
        lo, hi = min(indexes), max(indexes) + 1
        try:
            self.file.pwrite(offset + lo * 8, _be_bytes(table, lo, hi))
        except BaseException:
            # The cached table is ahead of the file now: read it again next time.
            self._l2_cache.pop(offset, None)
            raise

    def _entry_at(self, guest: int) -> int:
        l1_index = guest >> (self._cb + self._l2_bits)
        found = self._l2_for(l1_index)
        if found is None:
            return 0
        return found[1][(guest >> self._cb) & (self._l2_entries - 1)]

    def _spans(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(l1 index, start, end) of the parts of a range inside one L2 table each."""
        span = 1 << (self._cb + self._l2_bits)
        pos, end = offset, offset + length
        while pos < end:
            stop = min(end, (pos // span + 1) * span)
            yield pos // span, pos, stop
            pos = stop

    # -- reading ----------------------------------------------------------

    def _kind(self, entry: int) -> Allocation:
        if entry & OFLAG_COMPRESSED:
            return Allocation.DATA
        if entry & OFLAG_ZERO and self.header.version >= 3:
            return Allocation.ZERO
        if entry & L2E_OFFSET_MASK:
            return Allocation.DATA
        return Allocation.UNALLOCATED

    def block_status(self, offset: int, length: int) -> Extent:
        """What the first bytes of ``offset..offset+length`` are in this layer.

        The extent is at least 1 byte and at most ``length`` long; uncompressed
        data runs only as far as its host clusters are contiguous.
        """
        with self._lock:
            if length <= 0:
                raise OSError(errno_mod.EINVAL, os.strerror(errno_mod.EINVAL))
            self._check_range(offset, length)
            cs = self._cs
            first = self._entry_at(offset)
            kind = self._kind(first)
            in_cluster = offset % cs
            host = self._host(first)
            if host is not None:
                host += in_cluster
            pos = offset - in_cluster + cs
            end = offset + length
            span = 1 << (self._cb + self._l2_bits)
            while pos < end:
                if (
                    kind is Allocation.UNALLOCATED
                    and pos % span == 0
                    and self._l2_for(pos // span) is None
                ):
                    pos += span  # a whole missing L2 table
                    continue
                entry = self._entry_at(pos)
                if self._kind(entry) is not kind:
                    break
                next_host = self._host(entry)
                if host is None:
                    if next_host is not None:
                        break
                elif next_host != host + (pos - offset):
                    break
                pos += cs
            return Extent(kind, min(pos, end) - offset, host)

    def _host(self, entry: int) -> int | None:
        """The host offset of an uncompressed cluster, if it has one."""
        if entry & OFLAG_COMPRESSED:
            return None
        host = entry & L2E_OFFSET_MASK
        if host % self._cs:
            raise _eio(f"cluster offset {host:#x} in an L2 entry is not cluster aligned")
        return host or None

    def _read_compressed(self, entry: int) -> bytes:
        cached = self._last_compressed
        if cached is not None and cached[0] == entry:
            return cached[1]
        host, nbytes = self._compressed_span(entry)
        raw = self.file.pread(host, nbytes)
        try:
            data = zlib.decompressobj(-15).decompress(raw, self._cs)
        except zlib.error as exc:
            raise _eio(f"compressed cluster at {host:#x}: {exc}") from exc
        if len(data) != self._cs:
            raise _eio(f"compressed cluster at {host:#x} is truncated")
        self._last_compressed = (entry, data)
        return data

    def _backing(self, backing_read: BackingRead | None, offset: int, length: int) -> bytes:
        if backing_read is None:
            return bytes(length)
        data = bytes(backing_read(offset, length))
        if len(data) != length:
            raise OSError(errno_mod.EIO, "backing read returned a short buffer")
        return data

    def read(self, offset: int, length: int, backing_read: BackingRead | None = None) -> bytes:
        """``length`` bytes at guest ``offset``; unallocated parts come from ``backing_read``."""
        with self._lock:
            self._check_range(offset, length)
            parts: list[bytes] = []
            pos, end = offset, offset + length
            while pos < end:
                extent = self.block_status(pos, end - pos)
                n = extent.length
                if extent.kind is Allocation.UNALLOCATED:
                    parts.append(self._backing(backing_read, pos, n))
                elif extent.kind is Allocation.ZERO:
                    parts.append(bytes(n))
                elif extent.host_offset is not None:
                    parts.append(self.file.pread(extent.host_offset, n))
                else:
                    data = self._read_compressed(self._entry_at(pos))
                    start = pos % self._cs
                    n = min(n, self._cs - start)
                    parts.append(data[start : start + n])
                pos += n
            return b"".join(parts)

    def cow_ranges(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Guest ranges a write of ``offset..offset+length`` reads from ``backing_read``.

        The parts of the partially written clusters at either end that are
        unallocated in this image (clipped to the virtual size).
        """
        with self._lock:
            self._check_range(offset, length)
            if length == 0:
                return []
            cs = self._cs
            ranges: list[tuple[int, int]] = []
            head = offset - offset % cs
            tail = offset + length
            tail_cluster = tail - tail % cs
            if offset % cs and self._kind(self._entry_at(head)) is Allocation.UNALLOCATED:
                ranges.append((head, offset - head))
            if tail % cs and self._kind(self._entry_at(tail_cluster)) is Allocation.UNALLOCATED:
                stop = min(tail_cluster + cs, self.header.size)
                if stop > tail:
                    ranges.append((tail, stop - tail))
            return ranges

    # -- writing ----------------------------------------------------------

    def _cow_content(self, entry: int, piece: _Piece, backing_read: BackingRead | None) -> bytes:
        """The whole cluster of a partial write: its current contents around the data.

        From the backing image only the parts :meth:`cow_ranges` names are read.
        """
        cs = self._cs
        end = piece.start + len(piece.data)
        kind = self._kind(entry)
        if kind is Allocation.UNALLOCATED:
            valid = min(cs, self.header.size - piece.guest)
            head = self._backing(backing_read, piece.guest, piece.start) if piece.start else b""
            tail = b""
            if end < valid:
                tail = self._backing(backing_read, piece.guest + end, valid - end)
            return head + piece.data + tail + bytes(cs - max(end, valid))
        if kind is Allocation.ZERO:
            base = bytes(cs)
        elif entry & OFLAG_COMPRESSED:
            base = self._read_compressed(entry)
        else:
            base = self.file.pread(entry & L2E_OFFSET_MASK, cs)
        return base[: piece.start] + piece.data + base[end:]

    def write(self, offset: int, data: bytes, backing_read: BackingRead | None = None) -> None:
        """Write ``data`` at guest ``offset``.

        Partially written clusters not allocated here are completed from
        ``backing_read`` (zeros without one).
        """
        with self._lock:
            self._check_writable(offset, len(data))
            view = memoryview(data)
            for l1_index, start, end in self._spans(offset, len(data)):
                pieces = []
                pos = start
                while pos < end:
                    guest = pos - pos % self._cs
                    stop = min(end, guest + self._cs)
                    chunk = bytes(view[pos - offset : stop - offset])
                    pieces.append(_Piece(guest, pos - guest, chunk, self._index(guest)))
                    pos = stop
                self._write_pieces(l1_index, pieces, backing_read)

    def _index(self, guest: int) -> int:
        return (guest >> self._cb) & (self._l2_entries - 1)

    def _write_pieces(
        self, l1_index: int, pieces: list[_Piece], backing_read: BackingRead | None
    ) -> None:
        cs = self._cs
        l2_offset, table = self._l2_writable(l1_index)
        in_place: list[tuple[int, bytes]] = []
        relocate: list[tuple[_Piece, bytes]] = []
        rewrite: list[tuple[_Piece, bytes]] = []
        for piece in pieces:
            entry = table[piece.index]
            host = entry & L2E_OFFSET_MASK
            owned = host and entry & OFLAG_COPIED and not entry & OFLAG_COMPRESSED
            whole = piece.start == 0 and len(piece.data) == cs
            if owned:
                self._check_host(host)
            if owned and not (entry & OFLAG_ZERO and self.header.version >= 3):
                in_place.append((host + piece.start, piece.data))
                continue
            if whole:
                content = piece.data
            elif owned:  # a preallocated zero cluster
                content = (
                    bytes(piece.start) + piece.data + bytes(cs - piece.start - len(piece.data))
                )
            else:
                content = self._cow_content(entry, piece, backing_read)
            (rewrite if owned else relocate).append((piece, content))
        # 1. New clusters: refcounts first.
        targets: list[tuple[_Piece, int, bytes]] = []
        freed: list[int] = []
        for piece, content in relocate:
            freed.extend(self._entry_clusters(table[piece.index]))
            targets.append((piece, self._alloc_cluster(), content))
        self._commit_refcounts()
        for piece, content in rewrite:
            targets.append((piece, table[piece.index] & L2E_OFFSET_MASK, content))
        # 2. Data, durable before the L2 entries that point to it.
        self._pwrite_merged(in_place + [(host, content) for _p, host, content in targets])
        if not targets:
            return
        self.file.sync()
        # 3. The L2 entries; 4. once they are durable, the old references go.
        for piece, host, _content in targets:
            table[piece.index] = host | OFLAG_COPIED
        self._write_l2(l2_offset, table, [piece.index for piece, _h, _c in targets])
        if freed:
            self.file.sync()
            self._free_clusters(freed)

    def _pwrite_merged(self, writes: list[tuple[int, bytes]]) -> None:
        writes.sort(key=lambda item: item[0])
        run_start = -1
        run: list[bytes] = []
        run_end = -1
        for host, data in writes:
            if run and host == run_end:
                run.append(data)
                run_end += len(data)
                continue
            if run:
                self.file.pwrite(run_start, b"".join(run))
            run_start, run, run_end = host, [data], host + len(data)
        if run:
            self.file.pwrite(run_start, b"".join(run))
        if writes:
            self._file_size = max(self._file_size, run_end)

    def _set_entries(
        self, offset: int, length: int, new_entry: Callable[[int], int | None]
    ) -> list[int]:
        """Give every cluster of a cluster-aligned range the entry ``new_entry(old)``.

        ``None`` keeps the old entry. References the old entries held and the
        new ones do not are dropped once the new entries are durable; the
        host clusters that lost one are returned.
        """
        released: list[int] = []
        for l1_index, start, end in self._spans(offset, length):
            if l1_index >= len(self._l1):
                continue
            if self._l2_for(l1_index) is None and not new_entry(0):
                continue  # nothing to change in a missing table
            l2_offset, table = self._l2_writable(l1_index)
            changed: list[int] = []
            freed: list[int] = []
            for guest in range(start, end, self._cs):
                index = self._index(guest)
                old = table[index]
                new = new_entry(old)
                if new is None or new == old:
                    continue
                kept = set(self._entry_clusters(new))
                freed.extend(c for c in self._entry_clusters(old) if c not in kept)
                table[index] = new
                changed.append(index)
            if changed:
                self._write_l2(l2_offset, table, changed)
            if freed:
                self.file.sync()
                self._free_clusters(freed)
                released.extend(freed)
        return released

    def write_zeroes(
        self,
        offset: int,
        length: int,
        backing_read: BackingRead | None = None,
        *,
        unmap: bool = False,
    ) -> None:
        """Make ``length`` bytes at ``offset`` read as zeros.

        Whole clusters get the zero flag (version 3; with ``unmap`` their
        clusters are freed) or are deallocated (version 2 without a backing
        file); the rest is written as zero data.
        """
        with self._lock:
            self._check_writable(offset, length)
            if length == 0:
                return
            cs = self._cs
            end = offset + length
            full_start = -(-offset // cs) * cs
            full_end = end - end % cs
            if end == self.header.size:
                full_end = -(-end // cs) * cs
            if full_start >= full_end:
                self._zero_partial(offset, length, backing_read)
                return
            if offset < full_start:
                self._zero_partial(offset, full_start - offset, backing_read)
            if full_end < end:
                self._zero_partial(full_end, end - full_end, backing_read)
            if self.header.version >= 3:

                def zero_entry(old: int) -> int:
                    host = old & L2E_OFFSET_MASK
                    keeps = host and old & OFLAG_COPIED and not old & OFLAG_COMPRESSED
                    if keeps and not unmap:
                        return host | OFLAG_COPIED | OFLAG_ZERO
                    return OFLAG_ZERO

                self._set_entries(full_start, full_end - full_start, zero_entry)
            elif self.header.backing_file is None:
                self._set_entries(full_start, full_end - full_start, lambda _old: 0)
            else:
                stop = min(full_end, self.header.size)
                self.write(full_start, bytes(stop - full_start), backing_read)

    def _zero_partial(self, offset: int, length: int, backing_read: BackingRead | None) -> None:
        """Zero parts of clusters by writing zeros, where they do not read as zeros yet."""
        pos, end = offset, offset + length
        while pos < end:
            stop = min(end, pos - pos % self._cs + self._cs)
            kind = self._kind(self._entry_at(pos))
            if kind is Allocation.DATA or (
                kind is Allocation.UNALLOCATED and self.header.backing_file is not None
            ):
                self.write(pos, bytes(stop - pos), backing_read)
            pos = stop

    def discard(self, offset: int, length: int, *, punch: bool = False) -> None:
        """Drop the whole clusters of the range (partial clusters are left alone).

        As QEMU's qcow2 discard: in a version 3 image, a cluster that was
        allocated, or any cluster of an image with a backing file, gets the
        zero flag; in version 2 it becomes unallocated (which exposes the
        backing file's bytes, as QEMU allows a discard to). With
        ``punch`` (QEMU's pass-discard-request), host clusters no longer used
        become holes in the file.
        """
        with self._lock:
            self._check_writable(offset, length)
            cs = self._cs
            end = offset + length
            start = -(-offset // cs) * cs
            stop = end - end % cs if end < self.header.size else -(-end // cs) * cs
            if start >= stop:
                return
            released: list[int] = []
            if self.header.version < 3:
                released = self._set_entries(start, stop - start, lambda _old: 0)
            else:
                backed = self.header.backing_file is not None

                def zero(old: int) -> int | None:
                    allocated = old & ~OFLAG_ZERO != 0
                    return OFLAG_ZERO if backed or allocated else None

                released = self._set_entries(start, stop - start, zero)
            hole = getattr(self.file, "discard", None)
            if punch and hole is not None:
                # Only once their refcounts are zero on disk (or repairable from
                # the durable L2 tables, with lazy refcounts).
                for cluster in sorted(set(released)):
                    if self._refcount(cluster) == 0:
                        hole(cluster * cs, cs)

    def _refcount(self, cluster: int) -> int:
        table, index = divmod(cluster, self._rb_entries)
        if not self._has_block(table):
            return 0
        block = self._rb_load(self._rt[table] & REFT_OFFSET_MASK)
        return _rc_get(block, index, self._rc_bits)

    # -- size ---------------------------------------------------------------

    def _alloc_contiguous(self, count: int) -> int:
        """Allocate ``count`` adjacent clusters at the end of the file; the first's offset."""
        cs = self._cs
        while True:
            start = max(_clusters(self._file_size, cs), 1)
            tables = range(start // self._rb_entries, (start + count - 1) // self._rb_entries + 1)
            missing = [t for t in tables if not self._has_block(t)]
            if missing:
                self._make_refblock(missing[0])
                continue  # the new block may sit where the run was to go
            if any(self._cluster_taken(c) for c in range(start, start + count)):
                self._grow_file((start + count) * cs)
                continue
            self._grow_file((start + count) * cs)
            for cluster in range(start, start + count):
                self._update_refcount(cluster, 1)
            return start * cs

    def resize(self, size: int) -> None:
        """Grow the virtual size to ``size`` bytes (the L1 table moves if it must).

        The new area is unallocated here: with a backing image longer than the
        old size, the caller zeroes it (``write_zeroes``) as QEMU does.

        :raise Qcow2Error: shrinking, or a size that is not a multiple of 512.
        """
        with self._lock:
            if self.read_only:
                raise OSError(errno_mod.EROFS, "image is read-only")
            hdr = self.header
            if size % SECTOR or size < 0:
                raise Qcow2Error(f"Image size must be a multiple of {SECTOR} bytes")
            if size < hdr.size:
                raise Qcow2Error("Shrinking qcow2 images is not supported")
            l1_size = _clusters(size, self._cs << self._l2_bits)
            if l1_size * 8 > MAX_L1_BYTES:
                raise Qcow2Error("Active L1 table too large")
            if l1_size <= hdr.l1_size:
                hdr.size = size
                self.file.pwrite(24, _U64.pack(size))
                self.file.sync()
                return
            old_offset, old_size = hdr.l1_table_offset, hdr.l1_size
            old_count = _clusters(old_size * 8, self._cs)
            count = _clusters(l1_size * 8, self._cs)
            l1 = array("Q", self._l1)
            l1.extend([0] * (l1_size - len(l1)))
            if count == old_count:
                # Room in the table's last cluster: new zero entries, then the header.
                new_offset = old_offset
                self.file.pwrite(old_offset + old_size * 8, bytes((l1_size - old_size) * 8))
                old_count = 0
            else:
                new_offset = self._alloc_contiguous(count)
                self._commit_refcounts()
                self.file.pwrite(new_offset, _be_bytes(l1) + bytes(count * self._cs - l1_size * 8))
            self.file.sync()
            # size, crypt_method, l1_size, l1_table_offset: one write
            fields = struct.pack(">QIIQ", size, hdr.crypt_method, l1_size, new_offset)
            self.file.pwrite(24, fields)
            self.file.sync()
            hdr.size, hdr.l1_size, hdr.l1_table_offset = size, l1_size, new_offset
            self._l1 = l1
            self._meta_version += 1
            if old_count:
                self._free_clusters([(old_offset >> self._cb) + i for i in range(old_count)])

    def format_specific(self) -> dict[str, object]:
        """QEMU's ImageInfoSpecificQCow2 for this image (``format-specific`` ``data``)."""
        hdr = self.header
        if hdr.version < 3:
            return {"compat": "0.10", "compression-type": "zlib", "refcount-bits": 16}
        return {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": self.lazy_refcounts,
            "refcount-bits": self._rc_bits,
            "corrupt": self.corrupt,
            "extended-l2": False,
        }

    # -- header changes -----------------------------------------------------

    def set_backing(self, backing_file: str | None, backing_format: str | None = None) -> None:
        """Rewrite the backing file name and format in the header.

        :raise Qcow2Error: a format without a file, or the header would not fit.
        """
        with self._lock:
            if self.read_only:
                raise OSError(errno_mod.EROFS, "image is read-only")
            if backing_file is None and backing_format is not None:
                raise Qcow2Error("Backing format cannot be used without backing file")
            header = dataclasses.replace(
                self.header, backing_file=backing_file, backing_format=backing_format
            )
            self.file.pwrite(0, header.pack())
            self.file.sync()
            self.header = header

    # -- flush / close ------------------------------------------------------

    def flush(self) -> None:
        """Write deferred refcounts and make everything durable."""
        with self._lock:
            if self.closed or self.read_only:
                return
            self._write_refblocks()
            self.file.sync()

    def close(self) -> None:
        """Flush, mark the image clean, close an owned host file (idempotent)."""
        with self._lock:
            if self.closed:
                return
            try:
                if not self.read_only:
                    self._write_refblocks()
                    self.file.sync()
                    self._set_dirty(False)
            finally:
                self.closed = True
                if isinstance(self.file, FdHostFile):
                    self.file.close()

    def __enter__(self) -> Qcow2Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- create -------------------------------------------------------------------

PREALLOCATION_MODES = ("off", "metadata", "falloc", "full")


def _validate_create(
    size: int,
    version: int,
    cluster_size: int,
    backing_file: str | None,
    backing_format: str | None,
    lazy_refcounts: bool,
    refcount_bits: int,
    preallocation: str,
) -> None:
    if size < 0 or size % SECTOR:
        raise Qcow2Error(f"Image size must be a multiple of {SECTOR} bytes")
    if version not in (2, 3):
        raise Qcow2Error(f"Parameter 'version' does not accept value 'v{version}'")
    if (
        cluster_size < 1 << MIN_CLUSTER_BITS
        or cluster_size > 1 << MAX_CLUSTER_BITS
        or cluster_size & (cluster_size - 1)
    ):
        raise Qcow2Error(
            "Cluster size must be a power of two between "
            f"{1 << MIN_CLUSTER_BITS} and {1 << (MAX_CLUSTER_BITS - 10)}k"
        )
    if refcount_bits < 1 or refcount_bits > 64 or refcount_bits & (refcount_bits - 1):
        raise Qcow2Error("Refcount width must be a power of two and may not exceed 64 bits")
    if version < 3 and refcount_bits != 16:
        raise Qcow2Error(
            "Different refcount widths than 16 bits require compatibility level 1.1 or "
            "above (use version=v3 or greater)"
        )
    if version < 3 and lazy_refcounts:
        raise Qcow2Error(
            "Lazy refcounts only supported with compatibility level 1.1 and above "
            "(use version=v3 or greater)"
        )
    if backing_format is not None and backing_file is None:
        raise Qcow2Error("Backing format cannot be used without backing file")
    if preallocation not in PREALLOCATION_MODES:
        raise Qcow2Error(f"Parameter 'preallocation' does not accept value '{preallocation}'")
    if backing_file is not None and preallocation != "off":
        raise Qcow2Error(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on"
        )
    if preallocation in ("falloc", "full"):
        raise Qcow2Error(f"Unsupported preallocation mode: {preallocation}")
    l2_span = cluster_size * (cluster_size // 8)
    if _clusters(size, l2_span) * 8 > MAX_L1_BYTES:
        raise Qcow2Error(
            "The image size is too large for file format 'qcow2' (try using a larger cluster size)"
        )


def create(
    file: HostFile,
    size: int,
    *,
    version: int = 3,
    cluster_size: int = 65536,
    backing_file: str | None = None,
    backing_format: str | None = None,
    lazy_refcounts: bool = False,
    refcount_bits: int = 16,
    preallocation: str = "off",
) -> None:
    """Format ``file`` (emptied first) as a qcow2 image of ``size`` bytes.

    ``version`` 2 is QEMU's compat=0.10, 3 is compat=1.1.

    :raise Qcow2Error: invalid options, with QEMU's texts.
    """
    _validate_create(
        size,
        version,
        cluster_size,
        backing_file,
        backing_format,
        lazy_refcounts,
        refcount_bits,
        preallocation,
    )
    cs = cluster_size
    cluster_bits = cs.bit_length() - 1
    l2_entries = cs // 8
    l1_size = _clusters(size, cs * l2_entries)
    l1_clusters = _clusters(l1_size * 8, cs)
    prealloc = preallocation == "metadata"
    data_clusters = _clusters(size, cs) if prealloc else 0
    l2_clusters = l1_size if prealloc else 0
    rb_entries = cs * 8 // refcount_bits
    rt_clusters, rb_count = 1, 1
    while True:
        total = 1 + rt_clusters + rb_count + l1_clusters + l2_clusters + data_clusters
        need_rb = _clusters(total, rb_entries)
        need_rt = _clusters(need_rb * 8, cs)
        if (need_rb, need_rt) == (rb_count, rt_clusters):
            break
        rb_count, rt_clusters = max(rb_count, need_rb), max(rt_clusters, need_rt)
    rt_offset = cs
    rb_offset = rt_offset + rt_clusters * cs
    l1_offset = rb_offset + rb_count * cs
    l2_offset = l1_offset + l1_clusters * cs
    data_offset = l2_offset + l2_clusters * cs

    header = Qcow2Header(
        version=version,
        cluster_bits=cluster_bits,
        size=size,
        l1_size=l1_size,
        l1_table_offset=l1_offset,
        refcount_table_offset=rt_offset,
        refcount_table_clusters=rt_clusters,
        compatible_features=COMPAT_LAZY_REFCOUNTS if lazy_refcounts else 0,
        refcount_order=refcount_bits.bit_length() - 1,
        backing_file=backing_file,
        backing_format=backing_format,
    )
    packed = header.pack()
    file.truncate(0)
    refblocks = bytearray(rb_count * cs)
    for cluster in range(total):
        _rc_set(refblocks, cluster, refcount_bits, 1)
    rt = array("Q", [rb_offset + i * cs for i in range(rb_count)])
    rt.extend([0] * (rt_clusters * l2_entries - rb_count))
    file.truncate(total * cs)
    file.pwrite(rt_offset, _be_bytes(rt))
    file.pwrite(rb_offset, bytes(refblocks))
    if prealloc:
        l1 = array("Q", [(l2_offset + i * cs) | OFLAG_COPIED for i in range(l1_size)])
        file.pwrite(l1_offset, _be_bytes(l1))
        for i in range(l1_size):
            first = i * l2_entries
            count = min(l2_entries, data_clusters - first)
            table = array(
                "Q", [(data_offset + (first + j) * cs) | OFLAG_COPIED for j in range(count)]
            )
            table.extend([0] * (l2_entries - count))
            file.pwrite(l2_offset + i * cs, _be_bytes(table))
    file.sync()
    # The header last: a crash before this leaves no valid image at all.
    file.pwrite(0, packed)
    file.sync()


def create_path(
    path: str | os.PathLike[str],
    size: int,
    *,
    version: int = 3,
    cluster_size: int = 65536,
    backing_file: str | None = None,
    backing_format: str | None = None,
    lazy_refcounts: bool = False,
    refcount_bits: int = 16,
    preallocation: str = "off",
) -> None:
    """Create (or overwrite) the file at ``path`` as a qcow2 image; see :func:`create`."""
    _validate_create(
        size,
        version,
        cluster_size,
        backing_file,
        backing_format,
        lazy_refcounts,
        refcount_bits,
        preallocation,
    )
    existed = os.path.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    host = FdHostFile(fd, owned=True)
    try:
        create(
            host,
            size,
            version=version,
            cluster_size=cluster_size,
            backing_file=backing_file,
            backing_format=backing_format,
            lazy_refcounts=lazy_refcounts,
            refcount_bits=refcount_bits,
            preallocation=preallocation,
        )
    except Qcow2Error:
        if not existed:
            os.unlink(path)
        raise
    finally:
        host.close()
