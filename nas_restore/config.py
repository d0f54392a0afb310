"""YAML configs onto dataclasses: every field has a default, typos get a clear error with a suggestion."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nas_restore.errors import UserError, did_you_mean

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the config's fields."""


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from a (nested) dict, rejecting unknown keys by name.

    Any ``TypeError``/``ValueError`` of the dataclass's ``__post_init__`` (or its ``validate()``, when it
    has one) becomes a :class:`ConfigError` that names where in the config it happened.
    """
    data = dict(data or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        parts = []
        for key in unknown:
            close = did_you_mean(key, known, n=1)
            parts.append(f"{where}.{key}" + (f" (did you mean {where}.{close[0]}?)" if close else ""))
        raise ConfigError(f"unknown setting(s): {', '.join(parts)}. Known settings of {where}: "
                          f"{', '.join(sorted(known))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}.{key}")
        elif isinstance(hint, type) and hint in (int, float) and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            value = hint(value)
        elif hint is Path or hint == (Path | None):
            value = Path(value) if value is not None else None
        kwargs[key] = value
    try:
        obj = cls(**kwargs)
        if callable(getattr(obj, "validate", None)):  # checks across fields (a space's config)
            obj.validate()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-friendly data (paths as strings)."""
    def clean(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return clean(dataclasses.asdict(obj))


CONFIG_KINDS = ("search", "retrain", "compare", "rank", "continual")  # what `nas-restore config KIND` writes


def load_yaml(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The mapping in a YAML config file; ``kind`` (search, retrain, ...) names the command that writes one."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist: write the defaults with `nas-restore config "
                          f"{kind or '|'.join(CONFIG_KINDS)} > {path}` and edit them, or omit --config to use "
                          "the defaults")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder: give a YAML file (`nas-restore config "
                          f"{kind or '|'.join(CONFIG_KINDS)}` prints one)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def save_yaml(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge; ``None`` in overrides means 'not given' (CLI flags left unset)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict):
            out[key] = merge(out.get(key) if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def parse_assignments(items: list[str], flag: str, example: str = "key=0.01") -> dict[str, Any]:
    """``KEY=VALUE`` strings (e.g. repeated command-line flags) -> a dict, each VALUE read as YAML
    (numbers, null, true, lists; an empty VALUE is None)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r} (e.g. {flag} {example})")
        try:
            out[key.strip()] = yaml.safe_load(value.strip()) if value.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"{flag} {item!r}: the value is not valid YAML ({err})") from None
    return out
