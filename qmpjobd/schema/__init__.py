"""Command and event schemas: JSON Schema files, loaded and checked once,
applied to command arguments with QEMU's error texts, and rendered as
``query-qmp-schema``'s SchemaInfo list.

* :mod:`.loader` reads the files shipped in the package (:class:`SchemaSet`).
* :mod:`.validate` walks a schema in QAPI visitor order, so that the first
  error found is the one QEMU reports, and builds the stock ``jsonschema``
  validator that tests check the walk against. A QAPI flat union is written
  as a base object plus ``x-union: {discriminator, variants}``; standard
  ``if``/``then`` clauses are derived from it for the stock validator.
* :mod:`.introspect` renders ``query-qmp-schema``.

Must not import: jobs, block.
"""

from .loader import CommandSchema, EventSchema, SchemaSet, default_schema_dir
from .validate import TYPE_PREFIX, SchemaError, StockValidator

__all__ = [
    "TYPE_PREFIX",
    "CommandSchema",
    "EventSchema",
    "SchemaError",
    "SchemaSet",
    "StockValidator",
    "default_schema_dir",
]
