"""``query-qmp-schema``: the schemas rendered as QEMU's SchemaInfo list, with
types named by number as QEMU names them.

Must not import: jobs, block.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .loader import SchemaSet

_BUILTINS: Final = {
    "string": "str",
    "integer": "int",
    "boolean": "bool",
    "number": "number",
    "null": "null",
}


def introspect(schemas: SchemaSet, commands: list[str], events: list[str]) -> list[dict[str, Any]]:
    """``query-qmp-schema``'s SchemaInfo list for the given commands and events."""
    return _Introspector(schemas).run(commands, events)


class _Introspector:
    """Renders schemas as QEMU's SchemaInfo, with types named by number."""

    def __init__(self, schemas: SchemaSet) -> None:
        self.schemas = schemas
        self.resolve = schemas.walker.resolve
        self.entities: list[dict[str, Any]] = []
        self.names: dict[str, str] = {}
        self.builtins: dict[str, dict[str, Any]] = {}
        self.counter = 0
        self.hides = schemas.policy.hides

    def run(self, commands: list[str], events: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in commands:
            cmd = self.schemas.commands[name]
            if self.hides(cmd.features):
                continue
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
            if self.hides(event.features):
                continue
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
        schema, root = self.resolve(schema, root)
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
            features: dict[str, list[str]] = schema.get("x-member-features", {})
            values = [
                v
                for v in schema.get("enum", [schema.get("const")])
                if not self.hides(features.get(v, []))
            ]
            members = [
                {"name": v, **({"features": features[v]} if v in features else {})} for v in values
            ]
            entity: dict[str, Any] = {"members": members, "meta-type": "enum"}
            # SchemaInfoEnum's values member is deprecated (members says it all).
            if not self.hides(["deprecated"]):
                entity["values"] = values
            return self._new(key, entity)
        if json_type == "array":
            element = self.type_name(schema.get("items", {}), root)
            name = f"[{element}]"
            if name in {e["name"] for e in self.entities}:
                self.names[key] = name
                return name
            return self._new(key, {"element-type": element, "meta-type": "array"}, name)
        # An object: reserve its number before its members take theirs.
        entity = {"members": [], "meta-type": "object"}
        name = self._new(key, entity)
        entity["members"] = self._members(schema, root)
        if schema.get("x-type-features"):
            entity["features"] = list(schema["x-type-features"])
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
            features = subschema.get("x-features", [])
            if self.hides(features):
                continue
            entry: dict[str, Any] = {"name": member}
            if member not in required:
                entry["default"] = None
            entry["type"] = self.type_name(subschema, root)
            if features:
                entry["features"] = list(features)
            members.append(entry)
        return members

    def _variant(self, variant: Mapping[str, Any], root: Mapping[str, Any]) -> str:
        resolved, variant_root = self.resolve(variant, root)
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
    {
        "$schema",
        "$id",
        "title",
        "description",
        "x-returns",
        "x-features",
        "x-allow-oob",
    }
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
