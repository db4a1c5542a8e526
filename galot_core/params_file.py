"""Reading parameters: a ``params.yaml`` file and ``section.key=value`` overrides, into a :class:`Config`.

The file is read defensively (at most 1 MiB, UTF-8, YAML without aliases), because it is the
one input every command takes; every mistake is one :class:`GalotError` line naming the file
and, where there is one, the key. Overrides are the CLI's ``--set``, a flow's ``overrides``
parameter and ``dvc exp run -S``: they apply to the parsed file, or to a :class:`Config`
(:func:`with_overrides`), and the result is validated by the schema (galot_core/config.py).
:func:`set_in_text` goes the other way for ``galot init --preset``: keys into a file's text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from galot_core.config import Config, config_from_dict
from galot_core.errors import GalotError, show

PARAMS_MAX_BYTES = 1 << 20   # a params file is a few KB; anything larger is not one


class _AliasRefused(yaml.YAMLError):
    def __init__(self, mark: Any) -> None:
        self.line = mark.line + 1 if mark else None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (``*name``): a 300-byte file of nested aliases expands to gigabytes
    (a "billion laughs" bomb), and no galot parameter needs one."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _AliasRefused(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML without aliases; a mistake is one :class:`GalotError` line."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except _AliasRefused as e:
        where = f" at line {e.line}" if e.line else ""
        raise GalotError(f"{source}: YAML alias (*name){where} is not allowed; write the value out") from None
    except RecursionError:
        raise GalotError(f"{source}: YAML nested too deeply; parameters are section.key: value") from None
    except ValueError:  # an integer of more than 4,300 digits
        raise GalotError(f"{source}: a number with thousands of digits; no parameter takes one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise GalotError(f"{source}: not valid YAML{where}; fix the syntax") from None


def parse_json(text: str, source: str) -> Any:
    """``text`` parsed as JSON (a run's config.json given as --params reproduces that run's settings;
    as YAML, ``1e-06`` would be a string); a mistake is one :class:`GalotError` line."""
    try:
        return json.loads(text)
    except RecursionError:
        raise GalotError(f"{source}: JSON nested too deeply; parameters are section.key: value") from None
    except ValueError as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise GalotError(f"{source}: not valid JSON{where}; fix the syntax") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"al.strategy=BALD"`` → (["al", "strategy"], "BALD"); values are parsed as YAML scalars."""
    if "=" not in text:
        raise GalotError(f"--set {show(text)}: expected section.key=value, e.g. --set al.strategy=BALD")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise GalotError(f"--set {show(text)}: key must be section.key, e.g. gal.epsilon")
    try:
        parsed = parse_yaml(value, f"--set {show(text)}") if value.strip() else None
    except GalotError as e:
        if "alias" in str(e) or "nested" in str(e):
            raise
        parsed = value  # not YAML: the text itself (a string value)
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    if raw is not None and not isinstance(raw, dict):
        return raw  # config_from_dict says what is wrong with it
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (raw or {}).items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            raise GalotError(f"--set {show(text)}: '{section}' is not a section")
        sec[key] = value
    return out


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``cfg`` with ``section.key=value`` overrides applied, validated again."""
    if not overrides:
        return cfg
    return config_from_dict(apply_overrides(cfg.to_dict(), overrides), source="--set")


def load_config(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read, override and validate ``params.yaml``; ``path=None``: every key at its default."""
    if path is None:
        return config_from_dict(apply_overrides({}, overrides or []), source="defaults (no params.yaml)")
    path = Path(path)
    if not path.exists():
        raise GalotError(f"{path}: file not found; pass --params PATH, or `galot init` to write a starter params.yaml")
    if not path.is_file():
        raise GalotError(f"{path}: not a regular file; pass --params with a YAML file")
    try:
        with open(path, "rb") as f:
            data = f.read(PARAMS_MAX_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GalotError(f"{path}: cannot read the parameters ({e.__class__.__name__}); give a UTF-8 YAML file") \
            from None
    if len(data) > PARAMS_MAX_BYTES:
        raise GalotError(f"{path}: larger than {PARAMS_MAX_BYTES >> 20} MiB; a parameters file is a few KB")
    raw = (parse_json(text, str(path)) if path.suffix == ".json" else parse_yaml(text, str(path))) or {}
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(path))


# A trailing "# ..." after a plain (unquoted, #-free) or quoted scalar value.
_TRAILING_COMMENT = re.compile(r"""^\s+[\w.-]+:\s*(?:"[^"]*"|'[^']*'|[^#"'\s][^#]*?|)\s+(#.*)$""")


def set_in_text(text: str, settings: dict[str, Any], note: str | None = None) -> str:
    """``text`` (a params.yaml with one level of sections, two-space keys) with each ``section.key``
    of ``settings`` set to its value, everything else kept as written, comments included: the
    key's line is rewritten in place if its value differs (its trailing comment, which documents
    the key's choices, kept), or added at the end of its section (created if missing). With
    ``note``, the comment lines right above a rewritten key, which argue for the value it had,
    become ``# note``."""
    lines = text.splitlines()
    for dotted, value in settings.items():
        section, key = dotted.split(".", 1)
        line = f"  {key}: {json.dumps(value)}"  # JSON scalars are YAML: null, true, 4, 0.2, "bf16"
        header = next((i for i, s in enumerate(lines) if s.rstrip() == f"{section}:"), None)
        if header is None:
            lines += [f"{section}:", line]
            continue
        end = next((i for i in range(header + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "#"))),
                   len(lines))
        at = next((i for i in range(header + 1, end) if lines[i].startswith(f"  {key}:")), None)
        if at is None:
            lines.insert(end, line)
            continue
        if yaml.safe_load(lines[at]) == {key: value}:
            continue  # already so: the line and its reasons stay as written
        comment = _TRAILING_COMMENT.search(lines[at])
        lines[at] = line + (f"{' ' * max(2, comment.start(1) - len(line))}{comment.group(1)}" if comment else "")
        top = at
        while top > header + 1 and lines[top - 1].startswith("  #"):
            top -= 1
        if note is not None and top < at:
            lines[top:at] = [f"  # {note}"]
    return "\n".join(lines) + "\n"
