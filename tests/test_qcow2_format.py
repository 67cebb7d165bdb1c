"""The qcow2 format layer against QEMU's own tools (qemu-img, qemu-io).

Images made here must pass ``qemu-img check`` and read back identically in
QEMU; images made by QEMU must read identically here; block status must agree
with ``qemu-img map``; a child process killed in the middle of writes must
leave an image with leaked clusters at most.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmpjobd.block.qcow2 import (
    Allocation,
    Extent,
    FdHostFile,
    Qcow2Error,
    Qcow2Header,
    Qcow2Image,
    create_path,
)

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
    reason="needs qemu-img and qemu-io",
)

KiB = 1024
MiB = 1024 * 1024


# -- QEMU's tools ---------------------------------------------------------------


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}): {result.stderr}")
    return result


def qemu_check(path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """``qemu-img check``'s exit code and JSON report."""
    result = run("qemu-img", "check", *extra, "--output=json", path, check=False)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def assert_clean(path: Path) -> None:
    code, report = qemu_check(path)
    assert code == 0, report
    assert report["check-errors"] == 0
    assert "corruptions" not in report and "leaks" not in report, report


def assert_consistent(path: Path) -> dict[str, Any]:
    """No corruption (leaked clusters allowed)."""
    code, report = qemu_check(path)
    assert code in (0, 3), report
    assert report["check-errors"] == 0, report
    assert report.get("corruptions", 0) == 0, report
    return report


def qemu_info(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(run("qemu-img", "info", "-U", "--output=json", path).stdout)
    return info


def qemu_raw(path: Path, tmp: Path) -> bytes:
    out = tmp / (path.name + ".raw")
    run("qemu-img", "convert", "-U", "-O", "raw", path, out)
    data = out.read_bytes()
    out.unlink()
    return data


def qemu_io(path: Path, *commands: str, fmt: str = "qcow2") -> None:
    args: list[str] = ["qemu-io", "-f", fmt]
    for command in commands:
        args += ["-c", command]
    result = run(*args, path)
    assert "error" not in result.stdout.lower() and "fail" not in result.stdout.lower(), (
        result.stdout
    )


def qemu_create(path: Path, size: int, **opts: Any) -> None:
    options = ",".join(f"{k}={v}" for k, v in opts.items())
    args: list[str | Path] = ["qemu-img", "create", "-f", "qcow2"]
    if options:
        args += ["-o", options]
    run(*args, path, str(size))


def per_cluster_map(path: Path, cluster: int) -> list[tuple[Allocation, int | None]]:
    """``qemu-img map`` of the top layer as (kind, host offset) per cluster."""
    entries = json.loads(run("qemu-img", "map", "-U", "--output=json", path).stdout)
    out: list[tuple[Allocation, int | None]] = []
    for entry in entries:
        if entry["depth"] != 0 or not entry["present"]:
            kind, host = Allocation.UNALLOCATED, None
        elif entry["data"]:
            kind, host = Allocation.DATA, entry.get("offset")
        else:
            kind, host = Allocation.ZERO, entry.get("offset")
        for i in range(0, entry["length"], cluster):
            out.append((kind, None if host is None else host + i))
    return out


def extents(image: Qcow2Image) -> list[Extent]:
    out: list[Extent] = []
    pos = 0
    while pos < image.size:
        out.append(image.block_status(pos, image.size - pos))
        pos += out[-1].length
    return out


def our_map(image: Qcow2Image) -> list[tuple[Allocation, int | None]]:
    out: list[tuple[Allocation, int | None]] = []
    pos = 0
    while pos < image.size:
        extent = image.block_status(pos, image.size - pos)
        assert extent.length > 0
        for i in range(0, extent.length, image.cluster_size):
            host = None if extent.host_offset is None else extent.host_offset + i
            out.append((extent.kind, host))
        pos += extent.length
    return out


def raw_reader(path: Path) -> Callable[[int, int], bytes]:
    """A backing_read callback on a raw file (zeros past its end)."""

    def read(offset: int, length: int) -> bytes:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(length)
        return data + bytes(length - len(data))

    return read


# -- create ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"version": 2},
        {"cluster_size": 512},
        {"cluster_size": 2 * MiB},
        {"cluster_size": 4096, "refcount_bits": 1},
        {"refcount_bits": 2},
        {"refcount_bits": 4},
        {"refcount_bits": 8},
        {"refcount_bits": 32},
        {"refcount_bits": 64, "cluster_size": 1024},
        {"lazy_refcounts": True},
        {"preallocation": "metadata"},
        {"preallocation": "metadata", "version": 2, "cluster_size": 4096},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults",
)
def test_created_images_pass_qemu_img_check_and_info(tmp_path: Path, opts: dict[str, Any]) -> None:
    path = tmp_path / "a.qcow2"
    size = 10 * MiB + 512
    create_path(path, size, **opts)
    assert_clean(path)
    info = qemu_info(path)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == size
    assert info["cluster-size"] == opts.get("cluster_size", 65536)
    assert info["dirty-flag"] is False
    data = info["format-specific"]["data"]
    if opts.get("version", 3) == 3:
        assert data == {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": opts.get("lazy_refcounts", False),
            "refcount-bits": opts.get("refcount_bits", 16),
            "corrupt": False,
            "extended-l2": False,
        }
    else:
        assert data["compat"] == "0.10"
        assert data["refcount-bits"] == 16
    assert qemu_raw(path, tmp_path) == bytes(size)
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.format_specific() == data
        assert image.size == size
        assert image.read(0, size) == bytes(size)
        kinds = {kind for kind, _host in our_map(image)}
        if opts.get("preallocation") == "metadata":
            assert kinds == {Allocation.DATA}
            assert our_map(image) == per_cluster_map(path, image.cluster_size)
        else:
            assert kinds == {Allocation.UNALLOCATED}


def test_created_image_with_backing_file(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(range(256)) * 4096)
    top = tmp_path / "top.qcow2"
    create_path(top, MiB, backing_file=str(base), backing_format="raw")
    assert_clean(top)
    info = qemu_info(top)
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "raw"
    assert qemu_raw(top, tmp_path) == base.read_bytes()
    with Qcow2Image.open_path(top, read_only=True) as image:
        assert image.backing_file == str(base)
        assert image.backing_format == "raw"
        assert image.read(1000, 5000, raw_reader(base)) == base.read_bytes()[1000:6000]
        assert image.block_status(0, MiB) == Extent(Allocation.UNALLOCATED, MiB)


def test_created_image_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.qcow2"
    create_path(path, 0)
    assert_clean(path)
    assert qemu_info(path)["virtual-size"] == 0


# The texts QEMU's qemu-img prints for the same options (checked in the test).
CREATE_ERRORS: list[tuple[dict[str, Any], dict[str, str] | None, str]] = [
    (
        {"cluster_size": 1000},
        {"cluster_size": "1000"},
        "Cluster size must be a power of two between 512 and 2048k",
    ),
    (
        {"cluster_size": 256},
        {"cluster_size": "256"},
        "Cluster size must be a power of two between 512 and 2048k",
    ),
    (
        {"cluster_size": 4 * MiB},
        {"cluster_size": str(4 * MiB)},
        "Cluster size must be a power of two between 512 and 2048k",
    ),
    (
        {"version": 2, "lazy_refcounts": True},
        {"compat": "0.10", "lazy_refcounts": "on"},
        "Lazy refcounts only supported with compatibility level 1.1 and above "
        "(use version=v3 or greater)",
    ),
    (
        {"version": 2, "refcount_bits": 8},
        {"compat": "0.10", "refcount_bits": "8"},
        "Different refcount widths than 16 bits require compatibility level 1.1 or above "
        "(use version=v3 or greater)",
    ),
    (
        {"refcount_bits": 3},
        {"refcount_bits": "3"},
        "Refcount width must be a power of two and may not exceed 64 bits",
    ),
    (
        {"refcount_bits": 128},
        {"refcount_bits": "128"},
        "Refcount width must be a power of two and may not exceed 64 bits",
    ),
    (
        {"backing_format": "raw"},
        {"backing_fmt": "raw"},
        "Backing format cannot be used without backing file",
    ),
    (
        {"preallocation": "bogus"},
        {"preallocation": "bogus"},
        "Parameter 'preallocation' does not accept value 'bogus'",
    ),
    (
        {"backing_file": "BASE", "backing_format": "raw", "preallocation": "metadata"},
        {"backing_file": "BASE", "backing_fmt": "raw", "preallocation": "metadata"},
        "Backing file and preallocation can only be used at the same time if extended_l2 is on",
    ),
    (
        {"cluster_size": 512, "size": 100 << 40},
        {"cluster_size": "512"},
        "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
    ),
    ({"size": 1000}, None, "Image size must be a multiple of 512 bytes"),
    ({"version": 4}, None, "Parameter 'version' does not accept value 'v4'"),
    ({"preallocation": "full"}, None, "Unsupported preallocation mode: full"),
    ({"preallocation": "falloc"}, None, "Unsupported preallocation mode: falloc"),
]


@pytest.mark.parametrize(("opts", "qemu_opts", "text"), CREATE_ERRORS)
def test_create_refuses_bad_options_with_qemus_texts(
    tmp_path: Path, opts: dict[str, Any], qemu_opts: dict[str, str] | None, text: str
) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(MiB))
    opts = {k: (str(base) if v == "BASE" else v) for k, v in opts.items()}
    size = opts.pop("size", MiB)
    path = tmp_path / "bad.qcow2"
    with pytest.raises(Qcow2Error) as info:
        create_path(path, size, **opts)
    assert info.value.desc == text
    assert not path.exists()
    if qemu_opts is not None:
        options = ",".join(f"{k}={str(base) if v == 'BASE' else v}" for k, v in qemu_opts.items())
        result = run(
            "qemu-img",
            "create",
            "-f",
            "qcow2",
            "-o",
            options,
            tmp_path / "q.qcow2",
            str(size),
            check=False,
        )
        assert result.returncode != 0
        assert result.stderr.strip().endswith(text), result.stderr


# -- reading images QEMU made -------------------------------------------------------

QEMU_IMAGES = [
    {"compat": "1.1"},
    {"compat": "0.10"},
    {"cluster_size": "512"},
    {"cluster_size": "4096", "refcount_bits": "1"},
    {"cluster_size": "2097152", "refcount_bits": "64"},
    {"cluster_size": "16384", "refcount_bits": "8", "lazy_refcounts": "on"},
    {"compat": "0.10", "cluster_size": "1024"},
]

QEMU_WRITES = [
    "write -P 0xab 0 64k",
    "write -P 0x11 100000 5000",
    "write -z 196608 131072",
    "write -P 0x22 262144 1000",
    "write -P 0x33 1048576 300000",
    "write -z 1100000 70000",
    "write -z -u 1310720 65536",
    "discard 1048576 65536",
    "write -P 0x44 3145216 512",
]


@pytest.mark.parametrize(
    "opts", QEMU_IMAGES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_reads_images_written_by_qemu(tmp_path: Path, opts: dict[str, str]) -> None:
    path = tmp_path / "q.qcow2"
    size = 3 * MiB + 1024
    qemu_create(path, size, **opts)
    qemu_io(path, *QEMU_WRITES)
    expected = qemu_raw(path, tmp_path)
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.version == (2 if opts.get("compat") == "0.10" else 3)
        assert image.cluster_size == int(opts.get("cluster_size", "65536"))
        assert image.refcount_bits == int(opts.get("refcount_bits", "16"))
        assert image.read(0, size) == expected
        # Unaligned reads, across cluster boundaries.
        rnd = random.Random(7)
        for _ in range(50):
            offset = rnd.randrange(size)
            length = rnd.randrange(min(200000, size - offset) + 1)
            assert image.read(offset, length) == expected[offset : offset + length]
        assert our_map(image) == per_cluster_map(path, image.cluster_size)


@pytest.mark.parametrize(
    "opts", QEMU_IMAGES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
)
def test_writes_into_images_written_by_qemu(tmp_path: Path, opts: dict[str, str]) -> None:
    path = tmp_path / "q.qcow2"
    size = 3 * MiB + 1024
    qemu_create(path, size, **opts)
    qemu_io(path, *QEMU_WRITES)
    model = bytearray(qemu_raw(path, tmp_path))
    rnd = random.Random(11)
    with Qcow2Image.open_path(path, no_flush=True) as image:
        for i in range(40):
            offset = rnd.randrange(size)
            length = min(rnd.randrange(1, 150000), size - offset)
            if i % 4 == 3:
                image.write_zeroes(offset, length, unmap=i % 8 == 3)
                model[offset : offset + length] = bytes(length)
            else:
                image.write(offset, bytes([i + 1]) * length)
                model[offset : offset + length] = bytes([i + 1]) * length
        assert image.read(0, size) == model
    assert_clean(path)
    assert qemu_raw(path, tmp_path) == model
    # And QEMU can keep writing.
    qemu_io(path, "write -P 0x77 0 128k")
    model[: 128 * KiB] = b"\x77" * (128 * KiB)
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.read(0, size) == model
    assert_clean(path)


@pytest.mark.parametrize("cluster_size", ["65536", "4096", "2097152"])
def test_reads_compressed_images(tmp_path: Path, cluster_size: str) -> None:
    raw = tmp_path / "src.raw"
    rnd = random.Random(3)
    chunks = []
    for i in range(48):
        kind = i % 3
        if kind == 0:
            chunks.append(bytes([i]) * 65536)
        elif kind == 1:
            chunks.append(rnd.randbytes(65536))  # incompressible: stored uncompressed
        else:
            chunks.append(b"qcow2 " * 10922 + b"1234")
    raw.write_bytes(b"".join(chunks))
    path = tmp_path / "c.qcow2"
    run("qemu-img", "convert", "-c", "-O", "qcow2", "-o", f"cluster_size={cluster_size}", raw, path)
    expected = raw.read_bytes()
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.read(0, image.size) == expected
        assert image.read(65536 * 2 + 7, 100000) == expected[65536 * 2 + 7 : 65536 * 2 + 100007]
        assert our_map(image) == per_cluster_map(path, image.cluster_size)
        assert any(kind is Allocation.DATA and host is None for kind, host in our_map(image)), (
            "no compressed cluster"
        )


def test_overwrites_compressed_clusters(tmp_path: Path) -> None:
    raw = tmp_path / "src.raw"
    raw.write_bytes(b"".join(bytes([i]) * 65536 for i in range(16)))
    path = tmp_path / "c.qcow2"
    run("qemu-img", "convert", "-c", "-O", "qcow2", raw, path)
    model = bytearray(raw.read_bytes())
    with Qcow2Image.open_path(path) as image:
        image.write(70000, b"\xee" * 100)  # partial: copy-on-write of the decompressed cluster
        model[70000:70100] = b"\xee" * 100
        image.write(4 * 65536, b"\xdd" * 65536)  # whole cluster
        model[4 * 65536 : 5 * 65536] = b"\xdd" * 65536
        image.write_zeroes(6 * 65536, 2 * 65536)
        model[6 * 65536 : 8 * 65536] = bytes(2 * 65536)
        image.discard(8 * 65536, 65536)
        model[8 * 65536 : 9 * 65536] = bytes(65536)
        assert image.read(0, image.size) == model
    # The compressed clusters' references are gone with them: no leaks.
    assert_clean(path)
    assert qemu_raw(path, tmp_path) == model


def test_reads_through_qemu_made_backing_chain(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_create(base, 2 * MiB)
    qemu_io(base, "write -P 0x5a 0 2M")
    top = tmp_path / "top.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "2M")
    qemu_io(top, "write -P 0x01 65536 4096", "write -z 262144 65536")
    expected = qemu_raw(top, tmp_path)
    with (
        Qcow2Image.open_path(base, read_only=True) as lower,
        Qcow2Image.open_path(top, read_only=True) as image,
    ):
        assert image.backing_file == str(base)
        assert image.backing_format == "qcow2"
        assert image.read(0, image.size, lower.read) == expected
        assert image.read(0, 65536) == bytes(65536)  # without a backing callback: zeros
        assert image.block_status(0, MiB) == Extent(Allocation.UNALLOCATED, 65536)
        data = image.block_status(65536, MiB)
        assert data.kind is Allocation.DATA and data.length == 65536
        assert image.block_status(262144, MiB) == Extent(Allocation.ZERO, 65536)
        assert our_map(image) == per_cluster_map(top, image.cluster_size)


def test_header_extensions_of_a_qemu_image(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(MiB))
    path = tmp_path / "q.qcow2"
    qemu_create(path, MiB, backing_file=base, backing_fmt="raw", lazy_refcounts="on")
    header = Qcow2Header.parse(path.read_bytes()[:65536])
    assert header.version == 3
    assert header.backing_file == str(base)
    assert header.backing_format == "raw"
    assert header.feature_names[(0, 0)] == "dirty bit"
    assert header.feature_names[(1, 0)] == "lazy refcounts"
    assert header.compatible_features == 1
    assert header.header_length == 112
    assert header.refcount_table_clusters >= 1
    assert header.l1_size == 1


# -- writing ----------------------------------------------------------------------


def test_data_written_here_reads_back_in_qemu_io(tmp_path: Path) -> None:
    path = tmp_path / "w.qcow2"
    create_path(path, 4 * MiB)
    with Qcow2Image.open_path(path) as image:
        image.write(0, b"\xab" * 65536)
        image.write(200000, b"\xcd" * 70000)
        image.write_zeroes(65536, 65536)
        image.write(3 * MiB + 100, b"\x01" * 3)
    assert_clean(path)
    qemu_io(
        path,
        "read -P 0xab 0 64k",
        "read -P 0 64k 64k",
        "read -P 0 128k 68928",
        "read -P 0xcd 200000 70000",
        "read -P 0 270000 100",
        "read -P 0x01 3145828 3",
    )


def test_zero_flags_and_discard_match_qemu_img_map(tmp_path: Path) -> None:
    path = tmp_path / "z.qcow2"
    create_path(path, MiB)
    with Qcow2Image.open_path(path) as image:
        image.write(0, b"\x01" * (4 * 65536))
        image.write_zeroes(0, 65536)  # keeps its cluster: zero flag + offset
        image.write_zeroes(65536, 65536, unmap=True)  # frees its cluster
        image.discard(2 * 65536, 65536)
        image.write_zeroes(8 * 65536, 2 * 65536)  # unallocated -> zero flag
        ours = our_map(image)
        assert ours[0][0] is Allocation.ZERO and ours[0][1] is not None
        assert ours[1] == (Allocation.ZERO, None)
        # QEMU's discard: an allocated cluster of a version 3 image gets the zero flag.
        assert ours[2] == (Allocation.ZERO, None)
        assert ours[3][0] is Allocation.DATA
        assert ours[8] == ours[9] == (Allocation.ZERO, None)
        # Writing into a preallocated zero cluster: the rest must read zeros.
        image.write(100, b"\x07" * 10)
        assert image.read(0, 200) == bytes(100) + b"\x07" * 10 + bytes(90)
    report = assert_consistent(path)
    assert "leaks" not in report
    assert our_map_of(path) == per_cluster_map(path, 65536)


def our_map_of(path: Path) -> list[tuple[Allocation, int | None]]:
    with Qcow2Image.open_path(path, read_only=True) as image:
        return our_map(image)


def test_version_2_zero_writes_deallocate(tmp_path: Path) -> None:
    path = tmp_path / "v2.qcow2"
    create_path(path, MiB, version=2)
    with Qcow2Image.open_path(path) as image:
        image.write(0, b"\x09" * (3 * 65536))
        image.write_zeroes(0, 2 * 65536 + 10)
        assert image.block_status(0, MiB) == Extent(Allocation.UNALLOCATED, 2 * 65536)
        assert image.read(0, 3 * 65536) == bytes(2 * 65536 + 10) + b"\x09" * (65536 - 10)
    assert_clean(path)
    assert our_map_of(path) == per_cluster_map(path, 65536)


def test_copy_on_write_from_the_backing_image(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(random.Random(5).randbytes(MiB))
    top = tmp_path / "top.qcow2"
    create_path(top, MiB, backing_file=str(base), backing_format="raw")
    model = bytearray(base.read_bytes())
    reader = raw_reader(base)
    with Qcow2Image.open_path(top) as image:
        assert image.cow_ranges(1000, 10) == [(0, 1000), (1010, 65536 - 1010)]
        assert image.cow_ranges(65536, 65536) == []
        image.write(1000, b"\xff" * 10, reader)
        model[1000:1010] = b"\xff" * 10
        assert image.cow_ranges(1000, 10) == []  # allocated now
        image.write_zeroes(70000, 100, reader)
        model[70000:70100] = bytes(100)
        image.write_zeroes(3 * 65536, 65536, reader)
        model[3 * 65536 : 4 * 65536] = bytes(65536)
        image.discard(5 * 65536, 65536)
        model[5 * 65536 : 6 * 65536] = bytes(65536)
        assert image.read(0, MiB, reader) == model
    assert_clean(top)
    assert qemu_raw(top, tmp_path) == model


def test_refcount_table_grows(tmp_path: Path) -> None:
    path = tmp_path / "g.qcow2"
    # 512-byte clusters with 64-bit refcounts: a refcount block covers 64 clusters,
    # the first table 64 blocks, so 3 MiB of data needs a bigger table.
    create_path(path, 8 * MiB, cluster_size=512, refcount_bits=64)
    before = Qcow2Header.parse(path.read_bytes()[:512])
    data = random.Random(9).randbytes(3 * MiB)
    with Qcow2Image.open_path(path, no_flush=True) as image:
        for i in range(0, len(data), 256 * KiB):
            image.write(i + 512, data[i : i + 256 * KiB])
    after = Qcow2Header.parse(path.read_bytes()[:512])
    assert after.refcount_table_clusters > before.refcount_table_clusters
    assert after.refcount_table_offset != before.refcount_table_offset
    assert_clean(path)
    assert qemu_raw(path, tmp_path)[512 : 512 + len(data)] == data


def test_resize_grows_the_image(tmp_path: Path) -> None:
    path = tmp_path / "r.qcow2"
    create_path(path, MiB, cluster_size=512, refcount_bits=8)
    data = random.Random(2).randbytes(300000)
    with Qcow2Image.open_path(path) as image:
        image.write(1000, data)
        l1_offset = image.header.l1_table_offset
        image.resize(MiB + 4096)  # the L1 table's cluster has room for one more entry
        assert (image.header.l1_size, image.header.l1_table_offset) == (33, l1_offset)
        image.resize(20 * MiB)  # the L1 table moves
        assert image.header.l1_size == 640
        assert image.header.l1_table_offset != l1_offset
        image.write(19 * MiB, b"\x42" * 5000)
        with pytest.raises(Qcow2Error) as info:
            image.resize(MiB)
        assert info.value.desc == "Shrinking qcow2 images is not supported"
    assert_clean(path)
    assert qemu_info(path)["virtual-size"] == 20 * MiB
    raw = qemu_raw(path, tmp_path)
    assert raw[1000:301000] == data
    assert raw[19 * MiB : 19 * MiB + 5000] == b"\x42" * 5000
    assert raw.count(0) == len(raw) - len(data) - 5000 + data.count(0)


def test_create_leaves_no_file_behind_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "n.qcow2"
    with pytest.raises(Qcow2Error):
        create_path(path, MiB, cluster_size=512, backing_file="b" * 600)
    assert not path.exists()


def test_set_backing_rewrites_the_header(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    create_path(base, MiB)
    path = tmp_path / "top.qcow2"
    create_path(path, MiB, backing_file="old-name", backing_format="raw")
    with Qcow2Image.open_path(path) as image:
        image.write(0, b"\x01" * 512)
        image.set_backing(str(base), "qcow2")
        assert image.backing_file == str(base)
    info = qemu_info(path)
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"
    assert_clean(path)
    with Qcow2Image.open_path(path) as image:
        assert (image.backing_file, image.backing_format) == (str(base), "qcow2")
        with pytest.raises(Qcow2Error, match="Backing format cannot be used without"):
            image.set_backing(None, "raw")
        with pytest.raises(Qcow2Error):
            image.set_backing("x" * 70000)
        assert image.backing_file == str(base)
        image.set_backing(None)
    info = qemu_info(path)
    assert "backing-filename" not in info
    assert_clean(path)
    qemu_io(path, "read -P 1 0 512", "read -P 0 512 64k")


def test_lazy_refcounts_dirty_bit(tmp_path: Path) -> None:
    path = tmp_path / "lazy.qcow2"
    create_path(path, MiB, lazy_refcounts=True)
    image = Qcow2Image.open_path(path)
    assert not image.dirty
    image.write(0, b"\x02" * 4096)
    assert image.dirty
    assert qemu_info(path)["dirty-flag"] is True
    image.flush()
    assert image.dirty  # stays until the image is closed
    image.close()
    assert qemu_info(path)["dirty-flag"] is False
    assert_clean(path)


def test_repairs_a_dirty_image_qemu_left_behind(tmp_path: Path) -> None:
    path = tmp_path / "lazy.qcow2"
    qemu_create(path, 4 * MiB, lazy_refcounts="on")
    # qemu-io's "abort" ends the process without closing the image, like a crash.
    result = subprocess.run(
        [
            "sh",
            "-c",
            'ulimit -c 0; exec qemu-io -c "write -P 0x61 0 1M" -c "write -P 0x62 2M 64k" '
            '-c abort "$0"',  # no core file
            str(path),
        ],
        capture_output=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert qemu_info(path)["dirty-flag"] is True
    code, report = qemu_check(path)
    assert code == 2 and report["corruptions"] > 0  # refcounts missing, as expected
    expected = b"\x61" * MiB + bytes(MiB) + b"\x62" * 65536 + bytes(2 * MiB - 65536)
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.dirty
        assert image.read(0, 4 * MiB) == expected
    with Qcow2Image.open_path(path) as image:
        assert not image.dirty
        image.write(3 * MiB, b"\x63" * 65536)
    assert_clean(path)
    assert qemu_raw(path, tmp_path) == expected[: 3 * MiB] + b"\x63" * 65536 + bytes(MiB - 65536)


def test_read_only_and_range_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.qcow2"
    create_path(path, MiB)
    with Qcow2Image.open_path(path, read_only=True) as image:
        with pytest.raises(OSError) as info:
            image.write(0, b"x")
        assert info.value.errno == 30  # EROFS
        with pytest.raises(OSError):
            image.read(MiB - 1, 2)
        with pytest.raises(OSError):
            image.block_status(0, 0)
    with pytest.raises(OSError):
        image.read(0, 1)


class FailingFile(FdHostFile):
    """A host file whose ``fail_at``-th write (or sync) fails with ENOSPC."""

    def __init__(self, fd: int, fail_at: int) -> None:
        super().__init__(fd, owned=True, no_flush=True)
        self.calls = 0
        self.fail_at = fail_at

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def pwrite(self, offset: int, data: bytes) -> None:
        self._tick()
        super().pwrite(offset, data)

    def sync(self) -> None:
        self._tick()
        super().sync()


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 28, 37, 50, 66, 89, 154, 190])
def test_failed_host_writes_leave_a_consistent_image(
    tmp_path: Path, fail_at: int, lazy: bool
) -> None:
    path = tmp_path / "f.qcow2"
    size = 2 * MiB
    # Small clusters, wide refcounts: many metadata writes to fail.
    create_path(path, size, cluster_size=1024, refcount_bits=64, lazy_refcounts=lazy)
    model = bytearray(size)
    unknown = bytearray(size)  # 1 where the failed request may or may not have landed
    rnd = random.Random(fail_at)
    host = FailingFile(os.open(path, os.O_RDWR), fail_at)
    image = Qcow2Image.open(host)
    failed = False
    for i in range(30):
        offset = rnd.randrange(size)
        length = min(rnd.randrange(1, 100000), size - offset)
        try:
            if i % 3 == 2:
                image.write_zeroes(offset, length)
                model[offset : offset + length] = bytes(length)
            else:
                image.write(offset, bytes([i + 1]) * length)
                model[offset : offset + length] = bytes([i + 1]) * length
            unknown[offset : offset + length] = bytes(length)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            assert not failed
            failed = True
            # A request fails whole or in part; its clusters may hold either contents.
            start = offset - offset % 1024
            stop = -(-(offset + length) // 1024) * 1024
            unknown[start:stop] = b"\x01" * (stop - start)
    try:
        image.close()
    except OSError as exc:  # writing the deferred refcounts failed
        assert exc.errno == errno.ENOSPC and lazy and not failed
        failed = True
        assert image.closed
        host.close()
        with Qcow2Image.open_path(path) as image:  # repairs the dirty image
            assert not image.dirty
    assert failed == (fail_at <= host.calls)
    assert_consistent(path)
    data = qemu_raw(path, tmp_path)
    for pos in range(0, size, 1024):
        chunk = unknown[pos : pos + 1024]
        if not any(chunk):
            assert data[pos : pos + 1024] == model[pos : pos + 1024], pos
        else:
            for i in range(pos, pos + 1024):
                assert unknown[i] or data[i] == model[i], i


# -- refusing what is not supported --------------------------------------------------


def patch(path: Path, offset: int, fmt: str, *values: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def test_refuses_unknown_incompatible_features_like_qemu(tmp_path: Path) -> None:
    path = tmp_path / "u.qcow2"
    qemu_create(path, MiB)
    patch(path, 72, ">Q", 1 << 10)
    text = "Unsupported qcow2 feature(s): Unknown incompatible feature: 400"
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path, read_only=True)
    assert info.value.desc == text
    assert run("qemu-img", "info", path, check=False).stderr.strip().endswith(text)


def test_refuses_a_version_qemu_refuses(tmp_path: Path) -> None:
    path = tmp_path / "v4.qcow2"
    qemu_create(path, MiB)
    patch(path, 4, ">I", 4)
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path, read_only=True)
    assert info.value.desc == "Unsupported qcow2 version 4"
    assert run("qemu-img", "info", path, check=False).stderr.strip().endswith(info.value.desc)


def test_refuses_a_corrupt_image_read_write_like_qemu(tmp_path: Path) -> None:
    path = tmp_path / "c.qcow2"
    qemu_create(path, MiB)
    patch(path, 72, ">Q", 2)
    text = "qcow2: Image is corrupt; cannot be opened read/write"
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path)
    assert info.value.desc == text
    result = run("qemu-io", "-c", "write 0 512", path, check=False)
    assert result.stderr.strip().endswith(text)
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.corrupt
        assert image.read(0, 512) == bytes(512)


@pytest.mark.parametrize(
    ("opts", "text"),
    [
        ({"extended_l2": "on"}, "Unsupported qcow2 feature(s): extended L2 entries"),
        (
            {"compression_type": "zstd"},
            "Unsupported qcow2 compression type: zstd (only zlib is supported)",
        ),
        ({"data_file": "DATA"}, "Unsupported qcow2 feature(s): external data file"),
    ],
)
def test_refuses_unsupported_features(tmp_path: Path, opts: dict[str, str], text: str) -> None:
    path = tmp_path / "f.qcow2"
    opts = {k: str(tmp_path / "data.raw") if v == "DATA" else v for k, v in opts.items()}
    qemu_create(path, MiB, **opts)
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path, read_only=True)
    assert info.value.desc == text


@pytest.mark.parametrize(
    ("incompatible", "compression_type", "text"),
    [
        (8, 0, "qcow2: Compression type incompatible feature bit must not be set"),
        (0, 1, "qcow2: Compression type incompatible feature bit must be set"),
        (0, 5, "qcow2: unknown compression type: 5"),
        (8, 5, "qcow2: unknown compression type: 5"),
    ],
)
def test_refuses_bad_compression_types_like_qemu(
    tmp_path: Path, incompatible: int, compression_type: int, text: str
) -> None:
    path = tmp_path / "ct.qcow2"
    qemu_create(path, MiB)
    patch(path, 72, ">Q", incompatible)
    patch(path, 104, ">B", compression_type)
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path, read_only=True)
    assert info.value.desc == text
    assert run("qemu-img", "info", path, check=False).stderr.strip().endswith(text)


def test_refuses_encryption_and_non_qcow2_files(tmp_path: Path) -> None:
    path = tmp_path / "e.qcow2"
    run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=secret",
        "-o",
        "encrypt.format=aes,encrypt.key-secret=s0",
        path,
        "1M",
    )
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path, read_only=True)
    assert info.value.desc == "Encrypted qcow2 images are not supported (encryption: aes)"
    patch(path, 32, ">I", 2)
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path, read_only=True)
    assert info.value.desc == "Encrypted qcow2 images are not supported (encryption: luks)"
    patch(path, 32, ">I", 3)
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path, read_only=True)
    assert info.value.desc == "Unsupported encryption method 3"
    assert run("qemu-img", "info", path, check=False).stderr.strip().endswith(info.value.desc)
    raw = tmp_path / "r.raw"
    raw.write_bytes(bytes(4096))
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(raw, read_only=True)
    assert info.value.desc == "Image is not in qcow2 format"


def test_internal_snapshots_only_read_only(tmp_path: Path) -> None:
    path = tmp_path / "s.qcow2"
    qemu_create(path, MiB)
    qemu_io(path, "write -P 3 0 64k")
    run("qemu-img", "snapshot", "-c", "snap", path)
    qemu_io(path, "write -P 4 0 4k")
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open_path(path)
    assert info.value.desc == "qcow2 images with internal snapshots can only be opened read-only"
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.read(0, 65536) == b"\x04" * 4096 + b"\x03" * 61440


def test_unknown_autoclear_bits_are_cleared_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "a.qcow2"
    qemu_create(path, MiB)
    patch(path, 88, ">Q", 1 << 7)
    with Qcow2Image.open_path(path) as image:
        assert image.header.autoclear_features == 0
        image.write(0, b"\x05" * 512)
    assert Qcow2Header.parse(path.read_bytes()[:65536]).autoclear_features == 0
    assert_clean(path)


# -- random operations against a flat model ---------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "zero", "zero-unmap", "discard"]),
        st.integers(0, 1 << 30),
        st.integers(1, 300 * KiB),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    fmt=st.sampled_from(
        [(3, 65536, 16), (3, 512, 1), (3, 4096, 4), (3, 1024, 64), (2, 4096, 16), (3, 2048, 8)]
    ),
    sectors=st.integers(1, 4096),
    with_backing=st.booleans(),
    ops=OPS,
)
def test_random_writes_match_a_flat_model(
    tmp_path_factory: pytest.TempPathFactory,
    fmt: tuple[int, int, int],
    sectors: int,
    with_backing: bool,
    ops: list[tuple[str, int, int, int]],
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    version, cluster, bits = fmt
    size = sectors * 512
    path = tmp / "p.qcow2"
    backing: Path | None = None
    calls: list[tuple[int, int]] = []
    if with_backing:
        backing = tmp / "base.raw"
        backing.write_bytes(random.Random(sectors).randbytes(size))
        model = bytearray(backing.read_bytes())
        create_path(
            path,
            size,
            version=version,
            cluster_size=cluster,
            refcount_bits=bits,
            backing_file=str(backing),
            backing_format="raw",
        )
        base_reader = raw_reader(backing)

        def reader_fn(offset: int, length: int) -> bytes:
            calls.append((offset, length))
            return base_reader(offset, length)

        reader: Callable[[int, int], bytes] | None = reader_fn
    else:
        model = bytearray(size)
        create_path(path, size, version=version, cluster_size=cluster, refcount_bits=bits)
        reader = None
    with Qcow2Image.open_path(path, no_flush=True) as image:
        for kind, raw_offset, raw_length, byte in ops:
            offset = raw_offset % size
            length = min(raw_length, size - offset)
            end = offset + length
            # Copy-on-write reads exactly what cow_ranges() announced.
            announced = set(image.cow_ranges(offset, length))
            calls.clear()
            if kind == "write":
                image.write(offset, bytes([byte]) * length, reader)
                model[offset:end] = bytes([byte]) * length
            elif kind in ("zero", "zero-unmap"):
                image.write_zeroes(offset, length, reader, unmap=kind == "zero-unmap")
                model[offset:end] = bytes(length)
            else:
                image.discard(offset, length)
                start = -(-offset // cluster) * cluster
                stop = end - end % cluster if end < size else size
                if start < stop and (backing is None or version == 3):
                    model[start:stop] = bytes(stop - start)
                elif start < stop:
                    # Version 2 over a backing file: the backing bytes show
                    # again (QEMU's discard does the same).
                    assert backing is not None
                    model[start:stop] = backing.read_bytes()[start:stop]
            assert set(calls) <= announced
            if kind == "write" and backing is not None:
                assert set(calls) == announced
            calls.clear()
            assert image.read(0, size, reader) == model
            assert sum(n for _o, n in calls) == sum(
                e.length for e in extents(image) if e.kind is Allocation.UNALLOCATED
            ) * (backing is not None)
    assert_clean(path)
    assert qemu_raw(path, tmp) == model
    assert our_map_of(path) == per_cluster_map(path, cluster)
    shutil.rmtree(tmp)


# -- crash consistency --------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import random, sys
    from qmpjobd.block.qcow2 import Qcow2Image
    path, seed = sys.argv[1], int(sys.argv[2])
    reader = None
    if len(sys.argv) > 3:
        backing = open(sys.argv[3], "rb").read()

        def reader(offset, length):
            return backing[offset : offset + length].ljust(length, b"\\0")

    rnd = random.Random(seed)
    image = Qcow2Image.open_path(path)
    size = image.size
    print("ready", flush=True)
    while True:
        offset = rnd.randrange(size)
        length = min(rnd.randrange(1, 200000), size - offset)
        op = rnd.random()
        if op < 0.6:
            image.write(offset, bytes([rnd.randrange(256)]) * length, reader)
        elif op < 0.8:
            image.write_zeroes(offset, length, reader, unmap=rnd.random() < 0.5)
        elif op < 0.9:
            image.discard(offset, length)
        else:
            image.flush()
    """
)

CRASH_FORMATS = [
    {"cluster_size": 512, "refcount_bits": 1},
    {"cluster_size": 512, "refcount_bits": 64},  # the refcount table grows
    {"cluster_size": 4096, "refcount_bits": 16},
    {"cluster_size": 65536},
    {"cluster_size": 2048, "refcount_bits": 4},
    {"cluster_size": 4096, "version": 2},
]


def crash_once(path: Path, seed: int, backing: Path | None = None) -> None:
    extra = [str(backing)] if backing is not None else []
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(seed), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == "ready\n", child.stderr.read() if child.stderr else ""
        # Somewhere in the middle of the writes (fsyncs make them slow enough).
        time.sleep(random.Random(seed).uniform(0.0, 0.3))
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("round_", range(10))
def test_sigkill_during_writes_leaves_no_corruption(tmp_path: Path, round_: int) -> None:
    fmt = CRASH_FORMATS[round_ % len(CRASH_FORMATS)]
    path = tmp_path / "crash.qcow2"
    create_path(path, 4 * MiB, **fmt)
    for attempt in range(2):  # two crashes in a row on the same image
        crash_once(path, round_ * 10 + attempt)
        assert_consistent(path)
    with Qcow2Image.open_path(path, read_only=True) as image:
        expected = qemu_raw(path, tmp_path)
        assert image.read(0, image.size) == expected
    # Still writable here, and then still consistent.
    with Qcow2Image.open_path(path) as image:
        image.write(0, b"\x01" * 70000)
    assert_consistent(path)


def test_sigkill_over_compressed_clusters(tmp_path: Path) -> None:
    raw = tmp_path / "src.raw"
    raw.write_bytes(
        b"".join(bytes([i]) * 4096 + random.Random(i).randbytes(61440) for i in range(64))
    )
    path = tmp_path / "c.qcow2"
    run("qemu-img", "convert", "-c", "-O", "qcow2", raw, path)
    for seed in (201, 202):
        crash_once(path, seed)
        assert_consistent(path)
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.read(0, image.size) == qemu_raw(path, tmp_path)


def test_sigkill_with_a_backing_file(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(random.Random(4).randbytes(4 * MiB))
    path = tmp_path / "top.qcow2"
    create_path(path, 4 * MiB, cluster_size=4096, backing_file=str(base), backing_format="raw")
    for seed in (301, 302):
        crash_once(path, seed, base)
        assert_consistent(path)
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.read(0, image.size, raw_reader(base)) == qemu_raw(path, tmp_path)


@pytest.mark.parametrize("round_", range(4))
def test_sigkill_with_lazy_refcounts(tmp_path: Path, round_: int) -> None:
    path = tmp_path / "lazy.qcow2"
    create_path(path, 4 * MiB, lazy_refcounts=True, cluster_size=4096 if round_ % 2 else 65536)
    crash_once(path, 100 + round_)
    assert qemu_info(path)["dirty-flag"] is True
    expected = qemu_raw(path, tmp_path)
    # QEMU repairs it...
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(path, copy)
    run("qemu-img", "check", "-r", "all", copy, check=False)
    assert_clean(copy)
    assert qemu_raw(copy, tmp_path) == expected
    # ...and so does opening it read-write here.
    with Qcow2Image.open_path(path) as image:
        assert not image.dirty
        assert image.read(0, image.size) == expected
        image.write(4096, b"\x03" * 100000)
        expected = expected[:4096] + b"\x03" * 100000 + expected[104096:]
    assert not qemu_info(path)["dirty-flag"]
    assert_consistent(path)
    assert qemu_raw(path, tmp_path) == expected


def test_zeroing_across_a_cluster_boundary_without_a_whole_cluster(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x7c" * (4 * 65536))
    path = tmp_path / "z.qcow2"
    create_path(path, 4 * 65536, backing_file=str(base), backing_format="raw")
    reader = raw_reader(base)
    with Qcow2Image.open_path(path) as image:
        image.write_zeroes(0, 2 * 65536, reader)
        image.write_zeroes(65537, 65536, reader)  # ends 1 byte into the third cluster
        assert image.read(0, 4 * 65536, reader) == bytes(2 * 65536 + 1) + b"\x7c" * (2 * 65536 - 1)
    assert_clean(path)


def test_writes_over_metadata_mark_the_image_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "m.qcow2"
    qemu_create(path, MiB)
    qemu_io(path, "write -P 1 0 64k")
    header = Qcow2Header.parse(path.read_bytes()[:65536])
    with path.open("rb") as f:
        f.seek(header.l1_table_offset)
        l2_offset = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
    # Guest cluster 1 now claims the L1 table's cluster as its data.
    patch(path, l2_offset + 8, ">Q", header.l1_table_offset | 1 << 63)
    with Qcow2Image.open_path(path) as image:
        with pytest.raises(OSError) as info:
            image.write(65536, b"\xff" * 512)
        assert info.value.errno == errno.EIO
        assert "overlaps with active L1 table" in str(info.value)
        assert image.corrupt and image.read_only
    assert qemu_info(path)["format-specific"]["data"]["corrupt"] is True
    with pytest.raises(Qcow2Error, match="Image is corrupt; cannot be opened read/write"):
        Qcow2Image.open_path(path)
    with Qcow2Image.open_path(path, read_only=True) as image:
        assert image.read(0, 65536) == b"\x01" * 65536


def test_unaligned_data_clusters_fail_reads(tmp_path: Path) -> None:
    path = tmp_path / "u.qcow2"
    qemu_create(path, MiB)
    qemu_io(path, "write -P 1 0 64k")
    header = Qcow2Header.parse(path.read_bytes()[:65536])
    with path.open("rb") as f:
        f.seek(header.l1_table_offset)
        l2_offset = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
    patch(path, l2_offset, ">Q", (5 * 65536 + 512) | 1 << 63)
    with Qcow2Image.open_path(path, read_only=True) as image:
        with pytest.raises(OSError) as info:
            image.read(0, 512)
        assert info.value.errno == errno.EIO
        assert image.read(65536, 512) == bytes(512)
