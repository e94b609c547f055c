"""Typed configuration from layered sources: defaults < a TOML file < environment variables < flags.

A daemon's configuration is a strict pydantic model (`extra="forbid"`, `strict=True`; paths may be
given as strings). This module gathers the values each source gives (`toml_source`, `env_source`,
`flag_source`), validates every source on its own (so a wrong value in the file is refused even when
a flag overrides it) and then the merged values (cross-field checks), and turns pydantic's errors into
one `ConfigError` whose message names the source and the key, e.g.
`agent.toml: sync_wait_seconds: expected a number, got '5'`.

Strings are never coerced from TOML (a TOML file has its own numbers and booleans). Environment
variables are strings by nature: they are converted to the key's type (`5`, `true`/`false`, JSON for
lists and tables) before the same strict validation. Flags arrive already converted by argparse.

May import: the standard library, pydantic, titus_common.errors.
"""

from __future__ import annotations

import argparse
import difflib
import json
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from titus_common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


@dataclass
class Source:
    """The values one source gives, and how an error names where each came from."""

    name: str  # used for a key without its own entry in `where` (a TOML file: its path)
    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # key -> "--sync-wait", "TITUS_AGENT_LISTEN", …

    def origin(self, key: str) -> str:
        return self.where.get(key, self.name)


def toml_source(model: type[BaseModel], path: Path, *, name: str | None = None) -> Source:
    """The keys of a TOML file; unknown keys are refused here, each named with close matches."""
    name = name or str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{name}: cannot read: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{name}: not valid TOML: {e}") from None
    unknown = [key for key in doc if key not in model.model_fields]
    if unknown:
        raise ConfigError("; ".join(f"{name}: {key}: {unknown_key(key, model.model_fields)}" for key in unknown))
    return Source(name, doc)


def unknown_key(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=3)
    return "unknown key" + (f" (did you mean {', '.join(close)}?)" if close else "")


def env_source(model: type[BaseModel], prefix: str, environ: Mapping[str, str]) -> Source:
    """`<prefix><KEY>` for every key of the model (TITUS_AGENT_SYNC_WAIT_SECONDS=3). Other variables
    with the prefix are not ours to refuse (launcher variables such as TITUS_AGENT_OPTS) and are
    ignored."""
    source = Source("environment")
    for key, info in model.model_fields.items():
        var = prefix + key.upper()
        if var in environ:
            source.values[key] = from_string(info.annotation, environ[var])
            source.where[key] = var
    return source


def from_string(annotation: Any, raw: str) -> Any:
    """An environment string as the key's type where it reads as one; else the string itself, for
    the strict validation to refuse with the key named. Lists and tables are JSON."""
    if get_origin(annotation) in (list, dict, tuple):
        if raw.lstrip().startswith(("[", "{")):
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                return raw
        return raw  # e.g. listen = "HOST:PORT": the model's own parser takes the string
    try:
        return TypeAdapter(annotation).validate_python(raw)  # lax: "5" -> 5.0, "false" -> False
    except ValidationError:
        return raw


def flag_source(parser: argparse.ArgumentParser, args: argparse.Namespace, keys: Collection[str]) -> Source:
    """The flags given (argparse leaves the others None), named by their long option in errors."""
    source = Source("flags")
    options = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    for key, value in vars(args).items():
        if key in keys and value is not None:
            source.values[key] = value
            source.where[key] = options.get(key, key)
    return source


def build(model: type[M], sources: Sequence[Source], *, merge: Iterable[str] = ()) -> M:
    """Validate each source alone (its own keys' types and ranges), then the merged values, a later
    source's value replacing an earlier one's (keys in `merge`: tables merged, the later winning per
    entry). Raises ConfigError naming source and key of every problem found."""
    problems: list[str] = []
    for source in sources:
        try:
            model.model_validate(source.values)
        except ValidationError as e:
            problems += [
                describe(err, source.origin(str(err["loc"][0])))
                for err in e.errors()
                if err["loc"] and err["loc"][0] in source.values
            ]
    if problems:
        raise ConfigError("; ".join(problems))
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    merge_keys = set(merge)
    for source in sources:
        for key, value in source.values.items():
            before = merged.get(key)
            if key in merge_keys and isinstance(before, dict) and isinstance(value, dict):
                merged[key] = {**before, **value}
            else:
                merged[key] = value
            origin[key] = source.origin(key)
    try:
        return model.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(
            "; ".join(describe(err, origin.get(str(err["loc"][0])) if err["loc"] else None) for err in e.errors())
        ) from None


_EXPECTED = {
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a table",
    "path_type": "a path (a string)",
    "finite_number": "a finite number",
}


def describe(err: ErrorDetails, where: str | None) -> str:
    """`<where>: <key>: <message>`; a model-wide check has no key, a direct construction no source."""
    return ": ".join(part for part in (where, location(err["loc"]), message(err)) if part)


def location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind in ("value_error", "assertion_error") and "error" in err.get("ctx", {}):
        return str(err.get("ctx", {})["error"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {show(err['input'])}"
    return f"{err['msg']}, got {show(err['input'])}"


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
