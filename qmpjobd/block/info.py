"""``query-named-block-nodes``: QEMU 7.2's BlockDeviceInfo of a node, for every driver.

What differs between drivers comes from the node's info hooks (see
:class:`~qmpjobd.block.node.BlockNode`); the structure, the members every
node has and their order are here. Members are inserted in QAPI order, then
printed in QEMU's dictionary order (:func:`qmpjobd.wire.qdict.qemu_order`),
which depends on insertion order where two members share a bucket.

Must not import: jobs, sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..wire.qdict import qemu_order
from .json_filename import json_filename

if TYPE_CHECKING:
    from .node import BlockNode

#: ImageInfo's members in QAPI order (QEMU 7.2).
IMAGE_INFO_MEMBERS = (
    "filename",
    "format",
    "dirty-flag",
    "actual-size",
    "virtual-size",
    "cluster-size",
    "encrypted",
    "compressed",
    "backing-filename",
    "full-backing-filename",
    "backing-filename-format",
    "snapshots",
    "backing-image",
    "format-specific",
)
#: BlockDeviceInfo's members in QAPI order (QEMU 7.2), those qmpjobd shows.
DEVICE_INFO_MEMBERS = (
    "file",
    "node-name",
    "ro",
    "drv",
    "backing_file",
    "backing_file_depth",
    "active",
    "encrypted",
    "detect_zeroes",
    "bps",
    "bps_rd",
    "bps_wr",
    "iops",
    "iops_rd",
    "iops_wr",
    "image",
    "cache",
    "write_threshold",
)


def _in_order(members: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    unknown = set(members) - set(order)
    if unknown:
        raise ValueError(f"members outside the QAPI order: {sorted(unknown)}")
    return {key: members[key] for key in order if key in members}


def full_open_options(node: BlockNode) -> dict[str, Any]:
    """The node's full open options: driver, strong options, children's options."""
    opts: dict[str, Any] = {"driver": node.driver}
    opts.update(node.strong_options())
    node.gather_child_options(opts)
    return opts


def filename(node: BlockNode) -> str:
    """The exact filename if there is one, else the ``json:`` pseudo-filename."""
    exact = node.exact_filename()
    if exact is not None:
        return exact
    return json_filename(full_open_options(node))


def image_info(
    node: BlockNode, *, protocol_info: bool = False, flat: bool = False
) -> dict[str, Any]:
    """QEMU's ImageInfo of the node, members in QAPI order; with
    *protocol_info* (QEMU 8.0 on), a protocol node's ``format-specific``;
    *flat*: without ``backing-image``."""
    info: dict[str, Any] = {"filename": filename(node), "format": node.driver}
    if node.has_info():
        info["dirty-flag"] = False
    actual = node.actual_size()
    if actual is not None:
        info["actual-size"] = actual
    info["virtual-size"] = node.size
    info.update(node.image_info_members())
    if protocol_info:
        specific = node.protocol_format_specific()
        if specific is not None:
            info["format-specific"] = specific
    below = None if flat else node.filter_or_cow_child()
    if below is not None:
        info["backing-image"] = image_info(below, protocol_info=protocol_info)
    return _in_order(info, IMAGE_INFO_MEMBERS)


def device_info(
    node: BlockNode, *, show_active: bool = False, protocol_info: bool = False, flat: bool = False
) -> dict[str, Any]:
    """QEMU's BlockDeviceInfo for ``query-named-block-nodes``, in its member
    order; ``active`` (QEMU 10.0) with *show_active*; *protocol_info*: see
    :func:`image_info`."""
    depth = 0  # QEMU counts it while it gathers what lies below, which flat skips
    below = None if flat else node.filter_or_cow_child()
    while below is not None:
        depth += 1
        below = below.filter_or_cow_child()
    image = image_info(node, protocol_info=protocol_info, flat=flat)
    info: dict[str, Any] = {
        "file": filename(node),
        "node-name": node.node_name,
        "ro": node.read_only,
        "drv": node.driver,
        "encrypted": False,
        "detect_zeroes": node.detect_zeroes,
        "bps": 0,
        "bps_rd": 0,
        "bps_wr": 0,
        "iops": 0,
        "iops_rd": 0,
        "iops_wr": 0,
        "image": image,
        "backing_file_depth": depth,
        "cache": {
            "writeback": True,
            "direct": node.cache_direct,
            "no-flush": node.cache_no_flush,
        },
        "write_threshold": 0,
    }
    backing_file = node.backing_file_name()
    if backing_file is not None:
        info["backing_file"] = backing_file
    if show_active:
        info["active"] = node.active
    result: dict[str, Any] = qemu_order(_in_order(info, DEVICE_INFO_MEMBERS))
    return result
