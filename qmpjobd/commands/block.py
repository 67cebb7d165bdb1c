"""Block node commands: blockdev-add, blockdev-del, query-named-block-nodes,
query-block, blockdev-set-active."""

from __future__ import annotations

from typing import Any

from ..block import BlockGraph
from . import Handler, SessionControl


def block_commands(graph: BlockGraph) -> list[tuple[str, Handler]]:
    def blockdev_add(session: SessionControl, args: dict[str, Any]) -> Any:
        graph.add(args)
        return {}

    def blockdev_del(session: SessionControl, args: dict[str, Any]) -> Any:
        graph.delete(args["node-name"])
        return {}

    def query_named_block_nodes(session: SessionControl, args: dict[str, Any]) -> Any:
        return graph.query_named_block_nodes(flat=args.get("flat", False))

    def blockdev_set_active(session: SessionControl, args: dict[str, Any]) -> Any:
        graph.set_active(args.get("node-name"), args["active"])
        return {}

    def query_block(session: SessionControl, args: dict[str, Any]) -> Any:
        # Nodes are not block backends: qemu-storage-daemon has no named ones.
        return []

    return [
        ("blockdev-set-active", blockdev_set_active),
        ("query-block", query_block),
        ("query-named-block-nodes", query_named_block_nodes),
        ("blockdev-add", blockdev_add),
        ("blockdev-del", blockdev_del),
    ]
