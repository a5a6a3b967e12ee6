"""YAML configs with `key=value` command-line overrides and validation against a schema.

Every stage that reads a config (pretraining, evaluation) declares a schema: a dict mapping each key to a
`Field`. `load_config(path, schema, overrides)` reads the YAML file, applies the overrides, fills defaults,
checks types, choices and paths, and returns a plain dict. Unknown keys, wrong types and missing paths raise
`ConfigError` naming the file and the key, before anything runs.

Overrides are `key=value` strings; the value is parsed as YAML, so `lr=0.1`, `cos=true`, `schedule=[120,160]`
and `norms={mean: [0.5], std: [0.2]}` all work. A dotted key (`norms.mean=[0.5]`) sets one entry of a dict key.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from cellemnet.errors import ConfigError
from cellemnet.io import atomic_write_text
from cellemnet.shipped import find_config

REQUIRED = object()  # sentinel: the key has no default and must be given

# What a path field must satisfy: an existing directory, an existing file, or anything (created later).
PATH_DIR = "dir"
PATH_FILE = "file"
PATH_OUT = "out"


@dataclasses.dataclass(frozen=True)
class Field:
    """One config key: its type(s), default, allowed values, and whether it names a path that must exist."""

    type: type | tuple[type, ...]
    default: Any = REQUIRED
    help: str = ""
    choices: tuple | None = None
    path: str | None = None  # PATH_DIR, PATH_FILE or PATH_OUT
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None  # returns an error message, or None when fine


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return t.__name__


def _coerce(key: str, value: Any, field: Field, source: str) -> Any:
    """Check one value against its field; ints are accepted where floats are expected."""
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"{source}: key '{key}' must be {_type_name(field.type)}, got null")
    types = field.type if isinstance(field.type, tuple) else (field.type,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if bool not in types and isinstance(value, bool):
        raise ConfigError(f"{source}: key '{key}' must be {_type_name(field.type)}, got a boolean ({value})")
    if not isinstance(value, types):
        raise ConfigError(
            f"{source}: key '{key}' must be {_type_name(field.type)}, got {type(value).__name__} ({value!r})"
        )
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"{source}: key '{key}' must be one of {list(field.choices)}, got {value!r}")
    if field.check is not None:
        problem = field.check(value)
        if problem:
            raise ConfigError(f"{source}: key '{key}' {problem}")
    return value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn `key=value` strings into a dict; values are parsed as YAML. Dotted keys stay dotted here."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc.__class__.__name__})") from None
        out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class gives the error
                break
            if first != key_node.start_mark.line + 1:
                raise DuplicateKeyError(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key, first: int, again: int):
        super().__init__(f"key {key!r} given twice (lines {first} and {again})")
        self.key, self.first, self.again = key, first, again


BASE_KEY = "BASE"  # `BASE: other.yaml` inherits that file's keys (path relative to this file); keys here win


def read_yaml(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty dict. A `BASE:` key names a file whose keys this one
    inherits (recursively; this file's keys replace the base's whole, lists and mappings included)."""
    path = Path(path)
    data = _read_one_yaml(path)
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: key '{BASE_KEY}' must be the path of another YAML file")
    base_path = (path.parent / base).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise ConfigError(f"{path}: key '{BASE_KEY}': {base} inherits from itself (a cycle)")
    if not base_path.is_file():
        raise ConfigError(f"{path}: key '{BASE_KEY}': base config not found: {base_path}")
    return {**read_yaml(base_path, (*_seen, path.resolve())), **data}


def _read_one_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of key: value, got {type(data).__name__}")
    return data


def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any], schema: Mapping[str, Field]) -> dict:
    """Return a copy of config with the overrides applied (dotted keys set one entry of a dict key)."""
    out = dict(config)
    for key, value in overrides.items():
        if "." in key and key.split(".", 1)[0] in schema:
            top, sub = key.split(".", 1)
            current = out.get(top, schema[top].default)
            if current is REQUIRED or current is None:
                current = {}
            if not isinstance(current, dict):
                raise ConfigError(f"override '{key}': '{top}' is not a mapping")
            current = dict(current)
            current[sub] = value
            out[top] = current
        else:
            out[key] = value
    return out


def validate(
    config: Mapping[str, Any],
    schema: Mapping[str, Field],
    source: str = "config",
    check_paths: bool = True,
    base_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Check keys, types, choices and paths; fill defaults. Returns a new dict holding every schema key."""
    unknown = sorted(set(config) - set(schema))
    if unknown:
        hint = ""
        import difflib

        close = difflib.get_close_matches(unknown[0], list(schema), n=1)
        if close:
            hint = f" (did you mean '{close[0]}'?)"
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'{hint}")
    out: dict[str, Any] = {}
    for key, field in schema.items():
        if key in config:
            value = _coerce(key, config[key], field, source)
        elif field.default is REQUIRED:
            raise ConfigError(f"{source}: required key '{key}' is missing")
        else:
            value = field.default
            # Defaults that are containers are copied so that callers cannot mutate the schema.
            if isinstance(value, (dict, list)):
                import copy

                value = copy.deepcopy(value)
        if field.path and value is not None and isinstance(value, str):
            p = Path(os.path.expanduser(value))
            if base_dir is not None and not p.is_absolute() and not p.exists():
                candidate = Path(base_dir) / p
                if candidate.exists():
                    p = candidate
            value = str(p)
            if check_paths and field.path == PATH_DIR and not p.is_dir():
                raise ConfigError(f"{source}: key '{key}': directory not found: {p}")
            if check_paths and field.path == PATH_FILE and not p.is_file():
                raise ConfigError(f"{source}: key '{key}': file not found: {p}")
        out[key] = value
    return out


def load_config(
    path: str | os.PathLike | None,
    schema: Mapping[str, Field],
    overrides: Iterable[str] | Mapping[str, Any] = (),
    check_paths: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Read a YAML config (or start empty when path is None), apply overrides, validate. Returns a plain dict.

    The one loader of every command's config (evaluation, pretraining, the probe): `BASE:` inheritance, duplicate
    keys refused, unknown override keys with a "did you mean", types and checks from the schema. `source` names
    the config in errors (default: the file, or "config"). A path that does not exist may name a shipped config
    (`mocov2_small.yaml`: cellemnet.shipped.find_config)."""
    if path is not None:
        path = find_config(path)
    config = read_yaml(path) if path is not None else {}
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    source = source or (str(path) if path is not None else "config")
    for key in overrides:
        top = key.split(".", 1)[0]
        if top not in schema:
            close = difflib.get_close_matches(top, list(schema), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"override '{key}=...': unknown key '{top}'{hint}")
    config = apply_overrides(config, overrides, schema)
    return validate(config, schema, source=source, check_paths=check_paths)


def save_config(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a config as YAML atomically (the copy that travels with checkpoints and MLflow runs)."""
    atomic_write_text(path, yaml.safe_dump(dict(config), sort_keys=False))


def describe(schema: Mapping[str, Field]) -> str:
    """A human-readable table of the schema, for --help texts and READMEs."""
    lines = []
    for key, f in schema.items():
        default = "(required)" if f.default is REQUIRED else repr(f.default)
        lines.append(f"  {key:<28} {_type_name(f.type):<14} default {default}  {f.help}")
    return "\n".join(lines)
