"""QEMU's command-line option syntaxes, for qemu-storage-daemon's command line.

- :func:`parse_keyval`: ``key=value,...`` as QEMU's ``keyval_parse`` reads
  ``--blockdev``: ``,,`` is a literal comma, dotted keys nest
  (``file.filename=x``), a first element without ``=`` is the value of the
  implied key, numeric keys (``inject-error.0.event``) make lists, the last
  of a repeated key wins. Every value is a string; a schema gives them types
  (:meth:`qmpjobd.schema.SchemaSet.keyval_arguments`).
- :func:`parse_opts`: QemuOpts, as ``--chardev`` and ``--monitor`` are read:
  flat keys, and a bare ``flag`` or ``noflag`` for ``flag=on`` or ``flag=off``.

A leaf module apart from ``errors``.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ConfigError

_KEY_FRAGMENT = re.compile(r"[A-Za-z0-9_-]{1,127}\Z")


def _split(text: str) -> list[str]:
    """Split at single commas; ``,,`` stays in the element (unescaped later)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if text.startswith(",,", i):
                current.append(",,")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def parse_keyval(text: str, implied_key: str | None = None) -> dict[str, Any]:
    """A nested dict of strings (and lists), as QEMU's keyval_parse builds it.

    :raise ConfigError: QEMU's texts, e.g. "Expected '=' after parameter 'x'".
    """
    root: dict[str, Any] = {}
    for index, element in enumerate(_split(text)):
        if element == "" and index > 0 and not text.endswith(",,"):
            continue  # a trailing comma
        key, eq, value = element.partition("=")
        if not eq or "," in key:
            if index == 0 and implied_key is not None:
                key, value = implied_key, element
            else:
                raise ConfigError(f"Expected '=' after parameter '{key.replace(',,', ',')}'")
        fragments = key.split(".")
        if not all(_KEY_FRAGMENT.match(f) for f in fragments):
            raise ConfigError(f"Invalid parameter '{key}'")
        node = root
        for depth, fragment in enumerate(fragments[:-1]):
            child = node.setdefault(fragment, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"Parameters '{'.'.join(fragments[: depth + 1])}.*' used inconsistently"
                )
            node = child
        if isinstance(node.get(fragments[-1]), dict):
            raise ConfigError(f"Parameters '{key}.*' used inconsistently")
        node[fragments[-1]] = value.replace(",,", ",")
    result = _listify(root, "")
    if not isinstance(result, dict):
        raise ConfigError("Invalid parameter '0'")  # only members can be numbered
    return result


def _listify(node: dict[str, Any], prefix: str) -> Any:
    """Dicts whose keys are all numbers become lists, index by index."""
    for key, value in node.items():
        if isinstance(value, dict):
            node[key] = _listify(value, f"{prefix}{key}.")
    if node and all(key.isdigit() for key in node):
        items = []
        for i in range(len(node)):
            if str(i) not in node:
                raise ConfigError(f"Parameter '{prefix}{i}' missing")
            items.append(node[str(i)])
        return items
    return node


def parse_opts(text: str, implied_key: str) -> dict[str, str]:
    """A flat dict of strings, as QemuOpts reads ``--chardev`` and ``--monitor``.

    :raise ConfigError: a malformed element.
    """
    opts: dict[str, str] = {}
    for index, element in enumerate(_split(text)):
        element = element.replace(",,", ",")
        key, eq, value = element.partition("=")
        if not eq:
            if index == 0:
                key, value = implied_key, element
            elif key.startswith("no") and len(key) > 2:
                key, value = key[2:], "off"
            else:
                value = "on"
        if not key:
            raise ConfigError(f"Invalid parameter '{element}'")
        opts[key] = value
    return opts
