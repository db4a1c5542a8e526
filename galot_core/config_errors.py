"""One line per mistake in the parameters: pydantic's validation errors said in galot's words.

pydantic checks the schema (galot_core/config.py); this module turns its first error into the
one line every command prints — the key as written in params.yaml, what it accepts (type,
choices, range and why the range ends there) and the value it got, shortened — and reads each
key's declaration back (:func:`field_spec`) for that and for the tests. It takes the schema as an
argument (``Config``, whose module calls :func:`one_line`), so it sits below config.py.
"""

from __future__ import annotations

import difflib
import typing
from typing import Annotated, Any, Literal, NamedTuple

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ValidationError

from galot_core.errors import show, shown_key


class FieldSpec(NamedTuple):
    """What params.yaml accepts for one key: its type, range, choices and the reasons."""

    kind: type            # int, float, bool, str or tuple (of str)
    optional: bool        # null allowed
    choices: tuple | None
    min: float | None
    min_exclusive: bool
    max: float | None
    help: str
    why: str


def field_spec(schema: type[BaseModel], section: str, key: str) -> FieldSpec:
    """The entry of ``section.key`` in ``schema`` (galot_core.config.Config: the one declaration)."""
    info = schema.model_fields[section].annotation.model_fields[key]
    tp = info.annotation
    optional = typing.get_origin(tp) is not Literal and type(None) in typing.get_args(tp)  # X | None
    if optional:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is Annotated:  # a tuple key: Annotated[tuple[...], its list validator]
        tp = typing.get_args(tp)[0]
    kind, choices = tp, None
    if typing.get_origin(tp) is tuple:
        kind, tp = tuple, typing.get_args(tp)[0]
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        kind = kind if kind is tuple else str
    ge = next((m.ge for m in info.metadata if isinstance(m, Ge)), None)
    gt = next((m.gt for m in info.metadata if isinstance(m, Gt)), None)
    le = next((m.le for m in info.metadata if isinstance(m, Le)), None)
    why = (info.json_schema_extra or {}).get("why", "")
    return FieldSpec(kind, optional, choices, gt if gt is not None else ge, gt is not None, le,
                     info.description or "", why)


_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "a list of strings"}
# pydantic's error types that mean "not a value of this key's type"
_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "tuple_type", "literal_error", "none_required"}


def _message(err: dict[str, Any], schema: type[BaseModel]) -> str:
    """One pydantic error of ``schema`` as galot's one line (without the source), naming the key."""
    loc, kind, value = err["loc"], err["type"], err.get("input")
    if not loc:
        return "expected a mapping of sections at the top level" if kind == "model_type" else _reason(err)
    if kind == "extra_forbidden" and len(loc) == 1:
        return f"unknown section '{shown_key(loc[0])}' (allowed: {', '.join(sorted(schema.model_fields))})"
    section = str(loc[0])
    if len(loc) == 1:
        return f"'{section}' must be a mapping of keys, got {show(value)}"
    allowed = schema.model_fields[section].annotation.model_fields
    if kind == "extra_forbidden":
        return f"unknown key '{section}.{shown_key(loc[1])}' ({_allowed_hint(section, str(loc[1]), list(allowed))})"
    key, spec = f"{section}.{loc[1]}", field_spec(schema, section, str(loc[1]))
    if kind == "finite_number" or (kind == "float_type" and isinstance(value, int) and not isinstance(value, bool)):
        return f"{key} must be a finite number, got {show(value)}"  # (or an integer too large for a float)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # shown as the number it stands for
    if kind == "literal_error" and isinstance(value, str):
        names = ", ".join("null" if c is None else str(c) for c in spec.choices)
        return f"{key} must be one of [{names}], got {show(value)}"
    if kind in _TYPE_ERRORS:
        return f"{key} must be {_KIND[str if spec.choices else spec.kind]}, got {show(value)}"
    if kind in ("greater_than", "greater_than_equal"):
        return f"{key} must be {'>' if spec.min_exclusive else '>='} {float(spec.min) if spec.kind is float else spec.min}" \
               f", got {show(value)}"
    if kind == "less_than_equal":
        return f"{key} must be <= {spec.max:g}{f' ({spec.why})' if spec.why else ''}, got {show(value)}"
    return f"{key} {_reason(err)}"


def _allowed_hint(section: str, key: str, allowed: list[str], width: int = 160) -> str:
    """The closest allowed keys when there are some, else the allowed keys, kept short.

    A section has tens of keys; listing all of them made the one line longer than a terminal
    row, so a near miss names its likely meaning and the rest point at the keys' one list.
    """
    close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"'{section}.{k}'" for k in close) + "?"
    listed = ", ".join(allowed)
    if len(listed) <= width:
        return f"allowed in '{section}': {listed}"
    head = listed[:width].rsplit(", ", 1)[0]
    return f"allowed in '{section}': {head}, … ({len(allowed)} keys; `galot init` writes them all)"


def _reason(err: dict[str, Any]) -> str:
    error = (err.get("ctx") or {}).get("error")
    return str(error) if error is not None else str(err.get("msg", "invalid"))


def one_line(e: ValidationError, schema: type[BaseModel]) -> str:
    """The error of validating ``schema`` to report, as one line: an unknown section or key first
    (it explains the others), else the first."""
    errors = e.errors(include_url=False)
    unknown = sorted((x for x in errors if x["type"] == "extra_forbidden"), key=lambda x: (len(x["loc"]), str(x["loc"])))
    return _message(unknown[0] if unknown else errors[0], schema)
