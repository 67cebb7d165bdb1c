"""The layering of docs/DESIGN.md, kept true: what each module may import."""

from __future__ import annotations

import ast
from pathlib import Path

import qmpjobd

PACKAGE = Path(qmpjobd.__file__).parent

# module (or package) -> modules of ours it must not import
FORBIDDEN: dict[str, set[str]] = {
    "errors": {"*"},
    "clock": {"*"},
    "qdict": {"*"},
    "events": {
        "jobs",
        "block",
        "blockjobs",
        "wire",
        "protocol",
        "session",
        "server",
        "commands",
        "app",
        "cli",
    },
    "wire": {
        "jobs",
        "block",
        "blockjobs",
        "protocol",
        "session",
        "server",
        "commands",
        "schema",
        "app",
        "cli",
    },
    "protocol": {"jobs", "block", "blockjobs", "session", "server", "commands", "app", "cli"},
    "schema": {"jobs", "block", "blockjobs", "session", "server", "commands", "app", "cli"},
    "jobs": {
        "wire",
        "protocol",
        "schema",
        "session",
        "server",
        "commands",
        "block",
        "blockjobs",
        "app",
        "cli",
    },
    "block": {
        "jobs",
        "blockjobs",
        "wire",
        "protocol",
        "schema",
        "session",
        "server",
        "commands",
        "app",
        "cli",
    },
    "blockjobs": {"wire", "protocol", "schema", "session", "server", "commands", "app", "cli"},
    "commands": {"session", "server", "app", "cli"},
    "session": {"jobs", "block", "blockjobs", "server", "app", "cli"},
    "server": {"jobs", "block", "blockjobs", "app", "cli"},
}
# Process-level leaves: they may import errors, nothing else of ours.
for _leaf in ("pidfile", "systemd", "keyval"):
    FORBIDDEN[_leaf] = {
        "clock",
        "qdict",
        "events",
        "wire",
        "protocol",
        "schema",
        "jobs",
        "block",
        "blockjobs",
        "commands",
        "session",
        "server",
        "app",
        "cli",
        "pidfile",
        "systemd",
        "keyval",
    } - {_leaf}
# Standard-library modules that mean sockets or JSON, kept out of the domain.
FORBIDDEN_STDLIB: dict[str, set[str]] = {
    "jobs": {"socket", "json", "asyncio.streams"},
    # block may use json: QEMU names some nodes by "json:{...}" pseudo-filenames.
    "block": {"socket"},
    "blockjobs": {"socket", "json"},
    "events": {"socket", "json", "asyncio"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Top-level names of our modules, and stdlib modules, that *path* imports."""
    tree = ast.parse(path.read_text())
    depth_of_file = len(path.relative_to(PACKAGE).parts) - 1
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("qmpjobd."):
                    found.add("qmpjobd:" + alias.name.split(".")[1])
                else:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                if node.level - 1 < depth_of_file:
                    continue  # inside the same subpackage
                if module:
                    found.add("qmpjobd:" + module.split(".")[0])
                else:
                    found.update("qmpjobd:" + alias.name for alias in node.names)
            elif module.startswith("qmpjobd"):
                parts = module.split(".")
                if len(parts) > 1:
                    found.add("qmpjobd:" + parts[1])
                else:
                    found.update("qmpjobd:" + alias.name for alias in node.names)
            else:
                found.add(module)
    return found


def test_layers_import_only_what_they_may() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        imported = _imports(path)
        ours = {name.split(":", 1)[1] for name in imported if name.startswith("qmpjobd:")}
        ours.discard(layer)
        banned = FORBIDDEN.get(layer, set())
        bad = ours if "*" in banned else ours & banned
        if bad:
            violations.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
        stdlib_bad = {m for m in imported if m in FORBIDDEN_STDLIB.get(layer, set())}
        if stdlib_bad:
            violations.append(f"{path.relative_to(PACKAGE)} imports {sorted(stdlib_bad)}")
    assert violations == []


def test_the_checker_sees_imports() -> None:
    assert "qmpjobd:errors" in _imports(PACKAGE / "protocol.py")
    assert "qmpjobd:protocol" in _imports(PACKAGE / "session.py")
