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
    "dispatch": {"*"},
    "profile": {"session", "server", "commands", "app", "cli", "block", "blockjobs"},
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
    # The x-qmpjobd-* extensions' domain: above jobs, blockjobs and block.
    "control": {"wire", "protocol", "schema", "session", "server", "commands", "app", "cli"},
    "session": {"jobs", "block", "blockjobs", "server", "app", "cli", "ledger"},
    "server": {"jobs", "block", "blockjobs", "app", "cli", "ledger"},
    # The ledger knows SQLite and plain records: the engine's records and
    # events, nothing of block nodes, QMP or the wire.
    "ledger": {
        "wire",
        "protocol",
        "schema",
        "session",
        "server",
        "commands",
        "dispatch",
        "block",
        "blockjobs",
        "app",
        "cli",
    },
}
# Only the composition root and the command layer reach the ledger.
for _layer_name in ("events", "wire", "protocol", "schema", "jobs", "block", "blockjobs"):
    FORBIDDEN[_layer_name] = FORBIDDEN[_layer_name] | {"ledger"}
# Modules of ours a layer may import although their package is forbidden to it.
EXCEPTIONS: dict[str, set[str]] = {
    # QEMU's dictionary orders, for the json: filenames and query-named-block-nodes.
    "block": {"wire.qdict"},
}
# Process-level leaves: they may import errors, nothing else of ours.
for _leaf in ("pidfile", "systemd", "keyval"):
    FORBIDDEN[_leaf] = {
        "clock",
        "dispatch",
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
        "ledger",
    } - {_leaf}
# Standard-library modules that mean sockets or JSON, kept out of the domain.
FORBIDDEN_STDLIB: dict[str, set[str]] = {
    "jobs": {"socket", "json", "asyncio.streams"},
    # block may use json: QEMU names some nodes by "json:{...}" pseudo-filenames.
    "block": {"socket"},
    "blockjobs": {"socket", "json"},
    "control": {"socket", "json"},
    "events": {"socket", "json", "asyncio"},
    # json is the ledger's storage format for options and event data, not the wire.
    "ledger": {"socket", "asyncio.streams"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Our modules (``qmpjobd:wire.qdict``), and stdlib modules, that *path* imports."""
    tree = ast.parse(path.read_text())
    depth_of_file = len(path.relative_to(PACKAGE).parts) - 1
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("qmpjobd."):
                    found.add("qmpjobd:" + alias.name.split(".", 1)[1])
                else:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                if node.level - 1 < depth_of_file:
                    continue  # inside the same subpackage
                if module:
                    found.add("qmpjobd:" + module)
                else:
                    found.update("qmpjobd:" + alias.name for alias in node.names)
            elif module.startswith("qmpjobd"):
                parts = module.split(".", 1)
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
        allowed = EXCEPTIONS.get(layer, set())
        ours = {
            name.split(":", 1)[1].split(".")[0]
            for name in imported
            if name.startswith("qmpjobd:") and name.split(":", 1)[1] not in allowed
        }
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
    assert "qmpjobd:wire.qdict" in _imports(PACKAGE / "block" / "info.py")


def _definitions() -> dict[str, list[str]]:
    """Every top-level function and class of the package: name -> defining modules."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    return found


def test_one_home_for_qemus_dictionary_orders() -> None:
    definitions = _definitions()
    for name in ("qemu_order", "qdict_order", "qdict_bucket", "ghash_order", "first_unexpected"):
        assert definitions.get(name) == ["wire/qdict.py"], (name, definitions.get(name))
    assert sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("qdict.py")) == [
        "wire/qdict.py"
    ]


def test_one_home_for_the_event_envelope() -> None:
    definitions = _definitions()
    assert definitions.get("event_message") == ["protocol.py"]
    assert definitions.get("event_line") == ["protocol.py"]
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "protocol.py":
            assert '"timestamp"' not in path.read_text(), path


def test_schema_is_a_package_of_loader_validate_introspect() -> None:
    import qmpjobd.schema

    folder = PACKAGE / "schema"
    assert not (PACKAGE / "schema.py").exists()
    assert sorted(p.name for p in folder.glob("*.py")) == [
        "__init__.py",
        "introspect.py",
        "loader.py",
        "validate.py",
    ]
    for name in ("SchemaSet", "CommandSchema", "EventSchema", "SchemaError", "default_schema_dir"):
        assert name in qmpjobd.schema.__all__
        assert hasattr(qmpjobd.schema, name)
    # Only the loader reads files; validation and introspection work on loaded documents.
    for module in ("validate.py", "introspect.py"):
        imported = _imports(folder / module)
        assert not imported & {"importlib.resources", "pathlib"}, module


def test_block_drivers_live_in_the_registry_not_in_the_graph() -> None:
    """graph.py keeps names, references and permissions; each driver is one
    module of block/drivers/, found only through the registry."""
    import importlib
    import inspect

    from qmpjobd.block.drivers import DRIVERS
    from qmpjobd.block.node import BlockNode

    assert {"null-co", "null-aio", "file", "raw", "blkdebug"} <= set(DRIVERS)
    graph = ast.parse((PACKAGE / "block" / "graph.py").read_text())
    strings = {
        n.value for n in ast.walk(graph) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    assert strings & set(DRIVERS) == set()
    names = {n.id for n in ast.walk(graph) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(graph) if isinstance(n, ast.Attribute)}
    names |= {a.name for n in ast.walk(graph) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert names & {cls.__name__ for cls in DRIVERS.values()} == set()
    modules = {n.module for n in ast.walk(graph) if isinstance(n, ast.ImportFrom)}
    assert "drivers" in modules
    assert not any((m or "").startswith("drivers.") for m in modules), modules
    # Every node class of a driver module is registered under its own name.
    for path in sorted((PACKAGE / "block" / "drivers").glob("*.py")):
        module = importlib.import_module(f"qmpjobd.block.drivers.{path.stem}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BlockNode) and cls.__module__ == module.__name__:
                assert DRIVERS.get(cls.driver) is cls, cls


def test_test_helpers_live_in_tests_support() -> None:
    tests = Path(__file__).parent
    assert sorted(p.name for p in tests.glob("test_*_support.py")) == []
    assert (tests / "support" / "__init__.py").exists()


def test_the_job_engine_knows_no_block_job() -> None:
    """jobs/ is generic: block-job events and query rows live in blockjobs/,
    which hears of a job's life through the engine's listener hook."""
    for path in sorted((PACKAGE / "jobs").rglob("*.py")):
        text = path.read_text()
        assert "BLOCK_JOB_" not in text, path
        assert "BlockJobInfo" not in text and "block_job" not in text, path
    events = (PACKAGE / "blockjobs" / "events.py").read_text()
    for name in ("READY", "PENDING", "COMPLETED", "CANCELLED", "ERROR"):
        assert f'"BLOCK_JOB_{name}"' in events


def test_the_ledger_hears_the_engine_through_hooks() -> None:
    """The ledger listens (a JobListener, a graph observer, a bus sink); the
    engine and the graph name no ledger, and only the ledger knows SQLite."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if "sqlite3" in _imports(path):
            assert rel.parts[0] == "ledger", rel
    for folder in ("jobs", "block", "blockjobs"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            assert "ledger" not in path.read_text().lower(), path
