"""A typed, recursion-free canonical form of decoded items, for exact comparison.

Python's ``==`` says ``1 == 1.0 == True`` and ``0.0 == -0.0``; QEMU does not.
"""

from __future__ import annotations

from qmpjobd.wire import ParseError


def canon(item: object) -> object:
    """Turn a decoded item into nested tuples tagged with exact types."""
    out: list[object] = []
    stack: list[object] = [item]
    while stack:
        v = stack.pop()
        if isinstance(v, _Close):
            out.append(v.tag)
        elif isinstance(v, ParseError):
            out.append(("error", v.desc))
        elif isinstance(v, dict):
            out.append("{")
            stack.append(_Close("}"))
            for k, x in reversed(list(v.items())):
                stack.append(x)
                stack.append(("key", k))
        elif isinstance(v, list):
            out.append("[")
            stack.append(_Close("]"))
            stack.extend(reversed(v))
        elif isinstance(v, tuple):
            out.append(v)
        elif isinstance(v, float):
            out.append(("float", v.hex()))
        else:
            out.append((type(v).__name__, v))
    return tuple(out)


class _Close:
    __slots__ = ("tag",)

    def __init__(self, tag: str) -> None:
        self.tag = tag
