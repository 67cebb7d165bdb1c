"""Command and event schemas: JSON Schema files under ``schema/``, loaded and
checked once, applied to command arguments with QEMU's error texts, and
rendered as ``query-qmp-schema``'s SchemaInfo list.

The files are JSON Schema (draft 2020-12). Each command's file describes its
``arguments`` object and carries three annotations of ours: ``x-returns`` (the
schema of the result), ``x-features`` and ``x-allow-oob``. Shared types live
in ``schema/types/`` and are reached with ``$ref: "qmpjobd:type/NAME"``. A
QAPI flat union is written as a base object plus ``x-union: {discriminator,
variants}``; the loader also derives standard ``if``/``then`` clauses from it,
so a stock JSON Schema validator accepts exactly the same instances. An
``integer`` without bounds is QAPI's ``int``: a signed 64-bit value.

Arguments are validated by walking the schema in QAPI visitor order, so that
the first error found is the one QEMU reports: members in declared order
(missing, then wrong type, then a bad enum value), then leftover members
(named in QEMU's hash order). Tests check that this walk and the stock
``jsonschema`` validator agree on what is valid.

Must not import: jobs, block.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jsonschema
import referencing
import referencing.jsonschema

from .errors import QMPError, QmpJobdError
from .qdict import first_unexpected

TYPE_PREFIX: Final = "qmpjobd:type/"
_INT64 = (-(1 << 63), (1 << 63) - 1)

_QAPI_JSON_NAME: Final = {
    "string": "string",
    "integer": "integer",
    "boolean": "boolean",
    "number": "number",
    "object": "object",
    "array": "array",
    "null": "null",
}


class SchemaError(QmpJobdError):
    """A schema file is malformed (a bug in the shipped schemas)."""


def default_schema_dir() -> Path:
    """``schema/`` beside the package (source tree and editable installs)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "schema", here / "schema"):
        if candidate.is_dir():
            return candidate
    raise SchemaError("schema directory not found")


def _type_ok(value: object, json_type: str) -> bool:
    match json_type:
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "null":
            return value is None
    raise SchemaError(f"unsupported type {json_type!r}")


def _python_int_checker(checker: Any, instance: object) -> bool:
    # QEMU's integer visitor refuses 1.0: only JSON integers are integers.
    return isinstance(instance, int) and not isinstance(instance, bool)


_TYPE_CHECKER = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", _python_int_checker
)
StockValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator, type_checker=_TYPE_CHECKER
)


def _full_name(path: tuple[str | int, ...], leaf: str | int | None = None) -> str:
    parts = (*path, leaf) if leaf is not None else path
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass
class _Walker:
    """Validates an instance in QAPI visitor order."""

    types: Mapping[str, Any]

    def resolve(
        self, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """Follow ``$ref``s: shared types by name, local ones (``#``, ``#/$defs/X``)
        within *root*, the document the schema came from. Returns the target and
        its document."""
        root = root if root is not None else schema
        while "$ref" in schema:
            ref = schema["$ref"]
            if ref.startswith(TYPE_PREFIX):
                schema = root = self.types[ref[len(TYPE_PREFIX) :]]
            elif ref.startswith("#"):
                target: Any = root
                for part in ref[1:].split("/")[1:]:
                    target = target[part.replace("~1", "/").replace("~0", "~")]
                schema = target
            else:
                raise SchemaError(f"unsupported $ref {ref!r}")
        return schema, root

    def visit(
        self,
        schema: Mapping[str, Any],
        value: object,
        path: tuple[str | int, ...],
        name: str | None,
        root: Mapping[str, Any] | None = None,
    ) -> None:
        schema, root = self.resolve(schema, root)
        if "anyOf" in schema:
            self.visit_alternate(schema, value, path, name, root)
            return
        json_type = schema.get("type")
        if json_type is None and "enum" in schema:
            json_type = "string"  # QAPI enums are strings
        if json_type is not None and not _type_ok(value, json_type):
            raise QMPError(
                f"Invalid parameter type for '{_full_name(path) or 'null'}', "
                f"expected: {_QAPI_JSON_NAME[json_type]}"
            )
        if "enum" in schema and value not in schema["enum"]:
            raise QMPError(
                f"Parameter '{name if name is not None else 'null'}' "
                f"does not accept value '{value}'"
            )
        if "const" in schema and value != schema["const"]:
            raise QMPError(
                f"Parameter '{name if name is not None else 'null'}' "
                f"does not accept value '{value}'"
            )
        if json_type == "integer":
            assert isinstance(value, int)
            low = schema.get("minimum", _INT64[0])
            high = schema.get("maximum", _INT64[1])
            if not low <= value <= high:
                raise QMPError(
                    f"Invalid parameter type for '{_full_name(path)}', expected: integer"
                )
        elif json_type == "array":
            assert isinstance(value, list)
            items = schema.get("items", {})
            for index, item in enumerate(value):
                self.visit(items, item, (*path, index), None, root)
        elif json_type == "object" and ("properties" in schema or "x-union" in schema):
            assert isinstance(value, dict)
            self.visit_members(schema, value, path, root)

    def visit_alternate(
        self,
        schema: Mapping[str, Any],
        value: object,
        path: tuple[str | int, ...],
        name: str | None,
        root: Mapping[str, Any],
    ) -> None:
        # QEMU picks an alternate's branch by the JSON type of the value alone.
        for branch in schema["anyOf"]:
            resolved, branch_root = self.resolve(branch, root)
            branch_type = resolved.get("type", "string" if "enum" in resolved else "")
            if _type_ok(value, branch_type):
                self.visit(resolved, value, path, name, branch_root)
                return
        raise QMPError(
            f"Invalid parameter type for '{_full_name(path)}', "
            f"expected: {schema.get('x-qapi-type', 'value')}"
        )

    def visit_members(
        self,
        schema: Mapping[str, Any],
        value: dict[str, Any],
        path: tuple[str | int, ...],
        root: Mapping[str, Any],
    ) -> None:
        known: set[str] = set()
        self.visit_properties(schema, value, path, known, root)
        union = schema.get("x-union")
        if union is not None:
            tag = value.get(union["discriminator"])
            variant = union["variants"].get(tag) if isinstance(tag, str) else None
            if variant is not None:
                variant, variant_root = self.resolve(variant, root)
                self.visit_properties(variant, value, path, known, variant_root)
        if schema.get("additionalProperties", True) is False:
            extra = [key for key in value if key not in known]
            if extra:
                leaf = first_unexpected(value, extra)
                raise QMPError(f"Parameter '{_full_name(path, leaf)}' is unexpected")

    def visit_properties(
        self,
        schema: Mapping[str, Any],
        value: dict[str, Any],
        path: tuple[str | int, ...],
        known: set[str],
        root: Mapping[str, Any],
    ) -> None:
        required = schema.get("required", ())
        for member, subschema in schema.get("properties", {}).items():
            known.add(member)
            if member not in value:
                if member in required:
                    raise QMPError(f"Parameter '{_full_name(path, member)}' is missing")
                continue
            self.visit(subschema, value[member], (*path, member), member, root)


_TRUE = frozenset({"on", "yes", "true", "y"})
_FALSE = frozenset({"off", "no", "false", "n"})


_KEYVAL_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")


def _keyval_int(text: str) -> int | None:
    """QEMU's qemu_strtoi64 with base 0: decimal, 0x hex, 0 octal."""
    if _KEYVAL_INT.match(text) is None:
        return None
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body[:2].lower() == "0x":
        return sign * int(body[2:], 16)
    return sign * int(body, 8 if body.startswith("0") else 10)


def _keyval_typed(
    walker: _Walker,
    schema: Mapping[str, Any],
    value: Any,
    path: tuple[str | int, ...],
    root: Mapping[str, Any] | None,
) -> Any:
    schema, root = walker.resolve(schema, root)
    if "anyOf" in schema:
        # An alternate: an object for dotted keys, otherwise the scalar branch.
        for branch in schema["anyOf"]:
            resolved, branch_root = walker.resolve(branch, root)
            kind = resolved.get("type", "string" if "enum" in resolved else "object")
            if (kind == "object") == isinstance(value, dict):
                return _keyval_typed(walker, resolved, value, path, branch_root)
        return value
    kind = schema.get("type")
    if isinstance(value, str):
        if kind == "integer":
            number = _keyval_int(value)
            if number is None:
                raise QMPError(f"Parameter '{_full_name(path)}' expects integer")
            return number
        if kind == "number":
            try:
                return float(value)
            except ValueError:
                raise QMPError(f"Parameter '{_full_name(path)}' expects number") from None
        if kind == "boolean":
            if value in _TRUE:
                return True
            if value in _FALSE:
                return False
            raise QMPError(f"Parameter '{_full_name(path)}' expects 'on' or 'off'")
        return value
    if isinstance(value, list) and kind == "array":
        items = schema.get("items", {})
        return [
            _keyval_typed(walker, items, item, (*path, i), root) for i, item in enumerate(value)
        ]
    if isinstance(value, dict) and kind == "object":
        members: dict[str, Any] = dict(schema.get("properties", {}))
        union = schema.get("x-union")
        if union is not None:
            tag = value.get(union["discriminator"])
            variant = union["variants"].get(tag) if isinstance(tag, str) else None
            if variant is not None:
                variant, variant_root = walker.resolve(variant, root)
                for name, sub in variant.get("properties", {}).items():
                    members[name] = (sub, variant_root)
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = members.get(key)
            if sub is None:
                out[key] = item
            elif isinstance(sub, tuple):
                out[key] = _keyval_typed(walker, sub[0], item, (*path, key), sub[1])
            else:
                out[key] = _keyval_typed(walker, sub, item, (*path, key), root)
        return out
    return value


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
        self.takes_no_arguments = not self.arguments.get("properties") and not self.arguments.get(
            "x-union"
        )


@dataclass
class EventSchema:
    name: str
    data: dict[str, Any]
    features: tuple[str, ...] = ()


class SchemaSet:
    """Every command, event and type schema, loaded and checked once."""

    def __init__(self, root: Path | None = None) -> None:
        root = root if root is not None else default_schema_dir()
        self.root = root
        self.types: dict[str, dict[str, Any]] = {}
        self.commands: dict[str, CommandSchema] = {}
        self.events: dict[str, EventSchema] = {}
        for path in sorted((root / "types").glob("*.json")):
            self.types[path.stem] = self._load(path)
        for path in sorted((root / "commands").glob("*.json")):
            doc = self._load(path)
            self.commands[path.stem] = CommandSchema(
                name=path.stem,
                arguments=doc,
                returns=doc.get("x-returns", {"type": "object", "additionalProperties": False}),
                features=tuple(doc.get("x-features", ())),
                allow_oob=bool(doc.get("x-allow-oob", False)),
            )
        for path in sorted((root / "events").glob("*.json")):
            doc = self._load(path)
            self.events[path.stem] = EventSchema(
                name=path.stem, data=doc, features=tuple(doc.get("x-features", ()))
            )
        self._walker = _Walker(self.types)
        self._registry = self._build_registry()
        self._stock: dict[str, Any] = {}

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
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
        self._walker.visit(schema.arguments, arguments, (), None)

    def keyval_arguments(self, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Give the strings of a keyval option (``--blockdev k=v,...``) the types
        *command*'s schema asks for, as QEMU's keyval input visitor does.

        Members the schema does not know are left as they are, for
        :meth:`validate_arguments` to name.

        :raise QMPError: a value of the wrong form, with QEMU's text (e.g.
            "Parameter 'size' expects integer").
        """
        typed = _keyval_typed(self._walker, self.commands[command].arguments, arguments, (), None)
        assert isinstance(typed, dict)
        return typed

    def stock_validator(self, command: str) -> Any:
        """A stock jsonschema validator for *command*'s arguments (for cross-checks)."""
        validator = self._stock.get(command)
        if validator is None:
            doc = _standardise(self.commands[command].arguments)
            validator = StockValidator(doc, registry=self._registry)
            self._stock[command] = validator
        return validator

    def _build_registry(self) -> referencing.Registry[Any]:
        resources = [
            (
                TYPE_PREFIX + name,
                referencing.Resource.from_contents(
                    _standardise(doc), default_specification=referencing.jsonschema.DRAFT202012
                ),
            )
            for name, doc in self.types.items()
        ]
        return referencing.Registry().with_resources(resources)

    # -- query-qmp-schema ---------------------------------------------------

    def introspect(self, commands: list[str], events: list[str]) -> list[dict[str, Any]]:
        """``query-qmp-schema``'s SchemaInfo list for the given commands and events."""
        return _Introspector(self).run(commands, events)


def _standardise(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Turn our ``x-union`` annotation into standard JSON Schema, recursively."""
    out = copy.deepcopy(dict(doc))

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                fix(value)
            if node.get("type") == "integer":
                # QAPI's int is int64 unless the schema says otherwise.
                node.setdefault("minimum", _INT64[0])
                node.setdefault("maximum", _INT64[1])
            union = node.get("x-union")
            if union is not None:
                disc = union["discriminator"]
                clauses = []
                for tag, variant in union["variants"].items():
                    clauses.append(
                        {
                            "if": {"properties": {disc: {"const": tag}}, "required": [disc]},
                            "then": variant,
                        }
                    )
                node["allOf"] = [*node.get("allOf", []), *clauses]
                if node.get("additionalProperties") is False:
                    del node["additionalProperties"]
                    node["unevaluatedProperties"] = False
        elif isinstance(node, list):
            for item in node:
                fix(item)

    fix(out)
    return out


_BUILTINS: Final = {
    "string": "str",
    "integer": "int",
    "boolean": "bool",
    "number": "number",
    "null": "null",
}


class _Introspector:
    """Renders schemas as QEMU's SchemaInfo, with types named by number."""

    def __init__(self, schemas: SchemaSet) -> None:
        self.schemas = schemas
        self.entities: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}
        self.builtins: dict[str, dict[str, Any]] = {}
        self.counter = 0

    def run(self, commands: list[str], events: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in commands:
            cmd = self.schemas.commands[name]
            entry: dict[str, Any] = {
                "name": name,
                "ret-type": self.type_name(cmd.returns),
                "meta-type": "command",
                "arg-type": self.type_name(cmd.arguments),
            }
            if cmd.allow_oob:
                entry["allow-oob"] = True
            if cmd.features:
                entry["features"] = list(cmd.features)
            out.append(entry)
        for name in events:
            event = self.schemas.events[name]
            entry = {"name": name, "meta-type": "event", "arg-type": self.type_name(event.data)}
            if event.features:
                entry["features"] = list(event.features)
            out.append(entry)
        return out + self.entities + list(self.builtins.values())

    def _key(self, schema: Mapping[str, Any]) -> str:
        # Types that differ only in their annotations are the same type.
        return json.dumps(_strip_annotations(schema), sort_keys=True)

    def _new(self, key: str, entity: dict[str, Any], name: str | None = None) -> str:
        if name is None:
            name = str(self.counter)
            self.counter += 1
        self.names[key] = name
        named = {"name": name, **entity}
        entity.clear()
        entity.update(named)
        self.entities.append(entity)
        return name

    def type_name(self, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> str:
        """The SchemaInfo name of *schema* (a document, or a part of *root*)."""
        schema, root = self.schemas._walker.resolve(schema, root)
        if "anyOf" in schema:
            return self._alternate(schema, root)
        json_type = schema.get("type")
        is_enum = "enum" in schema or "const" in schema
        if json_type is None and not is_enum:
            return self._builtin("any", "value")
        if json_type in _BUILTINS and not is_enum:
            return self._builtin(_BUILTINS[json_type], json_type.replace("integer", "int"))
        key = self._key(schema)
        if key in self.names:
            return self.names[key]
        if is_enum:
            values = list(schema.get("enum", [schema.get("const")]))
            return self._new(
                key,
                {"members": [{"name": v} for v in values], "meta-type": "enum", "values": values},
            )
        if json_type == "array":
            element = self.type_name(schema.get("items", {}), root)
            name = f"[{element}]"
            if name in {e["name"] for e in self.entities}:
                self.names[key] = name
                return name
            return self._new(key, {"element-type": element, "meta-type": "array"}, name)
        # An object: reserve its number before its members take theirs.
        entity: dict[str, Any] = {"members": [], "meta-type": "object"}
        name = self._new(key, entity)
        entity["members"] = self._members(schema, root)
        union = schema.get("x-union")
        if union is not None:
            entity["tag"] = union["discriminator"]
            entity["variants"] = [
                {"case": tag, "type": self._variant(variant, root)}
                for tag, variant in union["variants"].items()
            ]
        return name

    def _members(self, schema: Mapping[str, Any], root: Mapping[str, Any]) -> list[dict[str, Any]]:
        required = set(schema.get("required", ()))
        members = []
        for member, subschema in schema.get("properties", {}).items():
            entry: dict[str, Any] = {"name": member}
            if member not in required:
                entry["default"] = None
            entry["type"] = self.type_name(subschema, root)
            members.append(entry)
        return members

    def _variant(self, variant: Mapping[str, Any], root: Mapping[str, Any]) -> str:
        resolved, variant_root = self.schemas._walker.resolve(variant, root)
        return self.type_name({"type": "object", **resolved}, variant_root)

    def _alternate(self, schema: Mapping[str, Any], root: Mapping[str, Any]) -> str:
        key = self._key(schema)
        if key in self.names:
            return self.names[key]
        entity: dict[str, Any] = {"members": [], "meta-type": "alternate"}
        name = self._new(key, entity)
        entity["members"] = [{"type": self.type_name(branch, root)} for branch in schema["anyOf"]]
        return name

    def _builtin(self, name: str, json_type: str) -> str:
        if name not in self.builtins:
            self.builtins[name] = {"name": name, "json-type": json_type, "meta-type": "builtin"}
        return name


_ANNOTATIONS: Final = frozenset(
    {"$schema", "$id", "title", "description", "x-returns", "x-features", "x-allow-oob"}
)


def _strip_annotations(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_annotations(v)
            for k, v in node.items()
            if k not in _ANNOTATIONS and not (k in ("properties", "required") and not v)
        }
    if isinstance(node, list):
        return [_strip_annotations(v) for v in node]
    return node


def iter_stock_errors(schemas: SchemaSet, command: str, arguments: object) -> Iterator[Any]:
    """The stock validator's errors for *arguments* (used by cross-check tests)."""
    yield from schemas.stock_validator(command).iter_errors(arguments)
