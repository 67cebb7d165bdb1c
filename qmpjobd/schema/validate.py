"""Argument validation: a walk of the schema in QAPI visitor order, and the
stock ``jsonschema`` validator the tests cross-check it with.

The walk finds the first error QEMU reports: members in declared order
(missing, then wrong type, then a bad enum value), then leftover members
(named in QEMU's hash order). An ``integer`` without bounds is QAPI's
``int``: a signed 64-bit value. Shared types are reached with
``$ref: "qmpjobd:type/NAME"``; :meth:`Walker.resolve` follows them (and
local ``#`` references) for the walk and for introspection alike.

Must not import: jobs, block.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jsonschema
import referencing
import referencing.jsonschema

from ..compat import ACCEPT_ALL, CompatPolicy
from ..errors import QMPError, QmpJobdError
from ..wire.qdict import first_unexpected

TYPE_PREFIX: Final = "qmpjobd:type/"
_INT64 = (-(1 << 63), (1 << 63) - 1)
#: QAPI's unsigned integer types (``"x-qapi-int"`` on an integer schema): the
#: values QEMU's input visitor takes. uint64 and size take any JSON integer
#: that fits int64 or uint64 (a negative one wraps); the narrower ones check
#: the wrapped value against their maximum.
_UNSIGNED: Final = {
    "uint64": (_INT64[0], (1 << 64) - 1),
    "size": (_INT64[0], (1 << 64) - 1),
    "uint32": (0, (1 << 32) - 1),
    "uint16": (0, (1 << 16) - 1),
    "uint8": (0, (1 << 8) - 1),
}


class SchemaError(QmpJobdError):
    """A schema file is malformed (a bug in the shipped schemas)."""


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
class Walker:
    """Validates an instance in QAPI visitor order."""

    types: Mapping[str, Any]
    #: What to do with members and enum values that carry the deprecated
    #: or unstable feature (``x-features``, ``x-member-features``).
    policy: CompatPolicy = ACCEPT_ALL

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
        unsigned = schema.get("x-qapi-int")
        if unsigned is not None:
            self.visit_unsigned(unsigned, value, path, name)
            return
        json_type = schema.get("type")
        if json_type is None and "enum" in schema:
            json_type = "string"  # QAPI enums are strings
        if json_type is not None and not _type_ok(value, json_type):
            raise QMPError(
                f"Invalid parameter type for '{_full_name(path) or 'null'}', expected: {json_type}"
            )
        if "enum" in schema and value not in schema["enum"]:
            raise QMPError(
                f"Parameter '{name if name is not None else 'null'}' "
                f"does not accept value '{value}'"
            )
        if isinstance(value, str) and "x-member-features" in schema:
            value_features = schema["x-member-features"].get(value)
            if value_features:
                self.policy.check_value(value_features, value)
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

    @staticmethod
    def visit_unsigned(
        qapi_type: str, value: object, path: tuple[str | int, ...], name: str | None
    ) -> None:
        """QEMU's ``type_uint64`` visitor, then ``visit_type_uintN``'s range check."""
        wide = _UNSIGNED["uint64"]
        if not isinstance(value, int) or isinstance(value, bool) or not wide[0] <= value <= wide[1]:
            raise QMPError(f"Parameter '{_full_name(path) or 'null'}' expects uint64")
        low, high = _UNSIGNED[qapi_type]
        if not low <= value % (1 << 64) <= high:
            # visit_type_uintN names the member alone, as QEMU does.
            leaf = name if name is not None else "null"
            raise QMPError(f"Parameter '{leaf}' expects {qapi_type}_t")

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
        # An alternate names the member alone, as QEMU's alternate visitor does.
        raise QMPError(
            f"Invalid parameter type for '{name if name is not None else 'null'}', "
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
            features = subschema.get("x-features")
            if features:
                self.policy.check_member(features, member)
            self.visit(subschema, value[member], (*path, member), member, root)


def standardise(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Turn our ``x-union`` annotation into standard JSON Schema, recursively."""
    out = copy.deepcopy(dict(doc))

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                fix(value)
            if node.get("type") == "integer":
                # QAPI's int is int64 unless the schema says otherwise.
                low, high = _UNSIGNED.get(node.get("x-qapi-int", ""), _INT64)
                node.setdefault("minimum", low)
                node.setdefault("maximum", high)
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


def stock_registry(types: Mapping[str, Mapping[str, Any]]) -> referencing.Registry[Any]:
    """The shared types, for the stock validator's ``$ref`` lookups."""
    resources = [
        (
            TYPE_PREFIX + name,
            referencing.Resource.from_contents(
                standardise(doc), default_specification=referencing.jsonschema.DRAFT202012
            ),
        )
        for name, doc in types.items()
    ]
    return referencing.Registry().with_resources(resources)


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
    walker: Walker,
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


def keyval_typed(
    walker: Walker, schema: Mapping[str, Any], value: dict[str, Any]
) -> dict[str, Any]:
    """Give a keyval option's strings the types ``schema`` asks for."""
    typed = _keyval_typed(walker, schema, value, (), None)
    assert isinstance(typed, dict)
    return typed
