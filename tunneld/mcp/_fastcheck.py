"""A fast "valid?" in front of jsonschema: ``jsonschema-rs`` says yes, or jsonschema decides.

Validating a tool's arguments with ``jsonschema`` (``best_match(iter_errors(...))``)
walks the schema through a generic Python validator: ~70 µs for ``read_file``'s
arguments, a good share of a small tool call. ``jsonschema-rs`` (Rust, the same JSON
Schema drafts) answers ``is_valid`` for the same schema in about 1 µs.

So a call's arguments (and a tool's structured output) go to ``jsonschema-rs`` first:
valid there means valid. Anything else — invalid there, a schema it cannot compile,
``jsonschema-rs`` not installed — goes to ``jsonschema`` as before, which decides and
words the error (field and expected schema), so messages are unchanged. Compiled once
per tool (the catalog caches it). ``offline=True``: a schema's remote ``$ref`` is never
fetched (it then fails to compile here and jsonschema handles the schema, as before).
Formats are checked (``validate_formats``), like jsonschema's format checker does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Acceptor", "compile_acceptor"]

Acceptor = Callable[[object], bool]


def compile_acceptor(schema: Any) -> Acceptor | None:
    """``jsonschema-rs``'s ``is_valid`` for ``schema``, or ``None`` when it is not
    installed or cannot compile the schema (the caller then uses jsonschema alone)."""
    try:
        import jsonschema_rs
    except ImportError:  # optional speed-up: a platform without its wheel still works
        return None
    try:
        validator = jsonschema_rs.validator_for(schema, validate_formats=True, offline=True)
    except Exception:  # its reasons are jsonschema's to report, on the slow path
        return None
    accept: Acceptor = validator.is_valid
    return accept
