"""Loading: the schema files shipped in the package, read and checked once.

The files live in the repository's ``schema/`` directory; the package holds
them as ``qmpjobd/_schema_data`` (a link to ``schema/`` in the source tree,
the files themselves in a wheel or an sdist). They are read with
:mod:`importlib.resources`, so the daemon finds them wherever it is
installed and whatever its working directory.

The files are JSON Schema (draft 2020-12). Each command's file describes
its ``arguments`` object and carries three annotations of ours:
``x-returns`` (the schema of the result), ``x-features`` and
``x-allow-oob``. Shared types live in ``types/``.

Must not import: jobs, block.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from typing import Any

import jsonschema

from ..compat import ACCEPT_ALL, CompatPolicy
from .introspect import introspect
from .validate import (
    SchemaError,
    StockValidator,
    Walker,
    keyval_typed,
    standardise,
    stock_registry,
)

#: Where the schema files sit inside the package.
DATA_DIR = "_schema_data"


def default_schema_dir() -> Traversable:
    """The schema files shipped in the package."""
    root = importlib.resources.files("qmpjobd") / DATA_DIR
    if not root.is_dir():
        raise SchemaError(f"schema files not found: no {DATA_DIR} in the qmpjobd package")
    return root


@dataclass
class CommandSchema:
    name: str
    arguments: dict[str, Any]
    returns: dict[str, Any]
    features: tuple[str, ...] = ()
    allow_oob: bool = False
    #: True when any argument at all is accepted: lets the empty-arguments case skip the walk.
    takes_no_arguments: bool = field(init=False)

    def __post_init__(self) -> None:
        # A boxed command (its arguments a shared type, by ``$ref``) takes some.
        self.takes_no_arguments = not any(
            self.arguments.get(key) for key in ("properties", "x-union", "$ref")
        )


@dataclass
class EventSchema:
    name: str
    data: dict[str, Any]
    features: tuple[str, ...] = ()


def _json_files(folder: Traversable) -> Iterator[tuple[str, Traversable]]:
    """``(stem, file)`` for every ``*.json`` file in *folder*, by name (none
    if an overlay has no such folder)."""
    if not folder.is_dir():
        return
    files = [item for item in folder.iterdir() if item.name.endswith(".json")]
    for item in sorted(files, key=lambda item: item.name):
        yield item.name.removesuffix(".json"), item


class SchemaSet:
    """Every command, event and type schema, loaded and checked once."""

    def __init__(
        self,
        root: Traversable | None = None,
        *,
        overlay: str | None = None,
        policy: CompatPolicy = ACCEPT_ALL,
    ) -> None:
        """Load every file under ``root``, then those under ``root/overlay``
        (a version profile's changes), each replacing the file of its name.
        *policy*: the ``--compat`` policy the checks and introspection follow."""
        self.policy = policy
        root = root if root is not None else default_schema_dir()
        self.root = root
        self.types: dict[str, dict[str, Any]] = {}
        self.commands: dict[str, CommandSchema] = {}
        self.events: dict[str, EventSchema] = {}
        self._load_folder(root)
        if overlay is not None:
            folder = root
            for part in overlay.split("/"):
                folder = folder / part
            if not folder.is_dir():
                raise SchemaError(f"schema overlay {overlay!r} not found")
            self._load_folder(folder)
        self.walker = Walker(self.types, policy)
        self._registry = stock_registry(self.types)
        self._stock: dict[str, Any] = {}

    def _load_folder(self, root: Traversable) -> None:
        for name, path in _json_files(root / "types"):
            self.types[name] = self._load(path)
        for name, path in _json_files(root / "commands"):
            doc = self._load(path)
            self.commands[name] = CommandSchema(
                name=name,
                arguments=doc,
                returns=doc.get("x-returns", {"type": "object", "additionalProperties": False}),
                features=tuple(doc.get("x-features", ())),
                allow_oob=bool(doc.get("x-allow-oob", False)),
            )
        for name, path in _json_files(root / "events"):
            doc = self._load(path)
            self.events[name] = EventSchema(
                name=name, data=doc, features=tuple(doc.get("x-features", ()))
            )

    @staticmethod
    def _load(path: Traversable) -> dict[str, Any]:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SchemaError(f"{path.name}: {exc}") from exc
        if not isinstance(doc, dict):
            raise SchemaError(f"{path.name}: not an object")
        try:
            StockValidator.check_schema(doc)
        except jsonschema.SchemaError as exc:
            raise SchemaError(f"{path.name}: {exc.message}") from exc
        return doc

    # -- validation ---------------------------------------------------------

    def validate_arguments(self, command: str, arguments: dict[str, Any]) -> None:
        """Check *arguments* for *command*.

        :raise QMPError: QEMU's text for the first error QEMU would find.
        """
        schema = self.commands[command]
        if not arguments and schema.takes_no_arguments:
            return
        self.walker.visit(schema.arguments, arguments, (), None)

    def keyval_arguments(self, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Give the strings of a keyval option (``--blockdev k=v,...``) the types
        *command*'s schema asks for, as QEMU's keyval input visitor does.

        Members the schema does not know are left as they are, for
        :meth:`validate_arguments` to name.

        :raise QMPError: a value of the wrong form, with QEMU's text (e.g.
            "Parameter 'size' expects integer").
        """
        return keyval_typed(self.walker, self.commands[command].arguments, arguments)

    def stock_validator(self, command: str) -> Any:
        """A stock jsonschema validator for *command*'s arguments (for cross-checks)."""
        validator = self._stock.get(command)
        if validator is None:
            doc = standardise(self.commands[command].arguments)
            validator = StockValidator(doc, registry=self._registry)
            self._stock[command] = validator
        return validator

    # -- query-qmp-schema ---------------------------------------------------

    def introspect(self, commands: list[str], events: list[str]) -> list[dict[str, Any]]:
        """``query-qmp-schema``'s SchemaInfo list for the given commands and events."""
        return introspect(self, commands, events)
