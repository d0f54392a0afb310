"""YAML configs onto dataclasses: every field has a default, typos get a clear error with a suggestion."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

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
    kwargs = {key: coerce(value, hints.get(key, Any), f"{where}.{key}") for key, value in data.items()}
    try:
        obj = cls(**kwargs)
        if callable(getattr(obj, "validate", None)):  # checks across fields (a space's config)
            obj.validate()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None
    return obj


_NONE = type(None)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` of the setting ``where`` (and converted where that loses
    nothing): an integer setting refuses ``1.9`` and ``true``; a number setting takes ``1e-3`` (which
    PyYAML reads as text) but not ``fast``; a nested dataclass is built from its mapping."""
    if hint is Any or hint is None:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and _NONE in members:
            return None
        errors = []
        for member in (m for m in members if m is not _NONE):
            try:
                return coerce(value, member, where)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where} must be {_describe(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where)
        raise ConfigError(f"{where} must be a mapping of settings, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be a whole number (e.g. 4), got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML reads 1e-3 (no dot) as text
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number (e.g. 0.001 or 1e-3), got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be text, got {value!r}")
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where} must be a path, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, e.g. [a, b], got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if len(args) == 1 or origin is list else Any
        out = [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping (key: value), got {value!r}")
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return {coerce(k, key_hint, f"{where} key"): coerce(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    if typing.get_origin(hint) is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, typing.get_args(hint)))}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path",
             _NONE: "null"}
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join(names.get(m, "a list" if typing.get_origin(m) in (list, tuple) else
                                 "a mapping" if typing.get_origin(m) is dict else str(m)) for m in members)


SIZE_LIMIT_NOTE = (" (an upper limit of the space, so that a config or genotype file cannot make the toolkit "
                   "allocate without bound)")


def check_ranges(obj: Any, limits: dict[str, tuple[float | None, float | None]], why: str = "") -> None:
    """Each named field of ``obj`` within [low, high] (None: unbounded), else a ``ValueError`` naming it.

    Upper limits guard against settings (often from someone else's genotype file) that would make the
    toolkit allocate without bound."""
    for name, (low, high) in limits.items():
        value = getattr(obj, name)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            span = (f"between {low} and {high}" if low is not None and high is not None
                    else f">= {low}" if low is not None else f"<= {high}")
            raise ValueError(f"{name} must be {span}, got {value}{why if high is not None and value > high else ''}")


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


MAX_CONFIG_BYTES = 4 * 1024 * 1024
CONFIG_KINDS = ("search", "retrain", "compare", "rank", "continual", "study")  # what `nas-restore config KIND` writes


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
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {path.stat().st_size / 2**20:.1f} MiB; a config is a few kB (at "
                          f"most {MAX_CONFIG_BYTES // 2**20} MiB): is it the right file?")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is a binary file, not YAML: give a YAML file (`nas-restore config "
                          f"{kind or '|'.join(CONFIG_KINDS)}` prints one)") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply to be a config; fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value lines), got {type(data).__name__}: "
                          f"start from `nas-restore config {kind or '|'.join(CONFIG_KINDS)}`")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: what is wrong, and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    hint = "; remove the tag: a config holds plain values only" if "constructor" in problem else ""
    return f"{problem}{where}{hint}"


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


# the settings a resumable folder (a search, a study) was made with


def changed_fields(previous: dict[str, Any], current: dict[str, Any], keys: Sequence[str] | None = None,
                   ignore: Iterable[str] = ()) -> list[str]:
    """The fields whose values differ: ``keys`` in their order, or every field of either (sorted)."""
    ignored = set(ignore)
    names = list(keys) if keys is not None else sorted(set(previous) | set(current))
    return [k for k in names if k not in ignored and previous.get(k) != current.get(k)]


def refuse_changed_settings(out: Path, what: str, changed: Sequence[str], consequence: str, may_change: str,
                            recorded_in: Path | None = None, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the ``changed`` fields when a folder (a study, a search run) holds ``what`` made otherwise."""
    if not changed:
        return
    where = f": not as in {recorded_in}" if recorded_in is not None else ""
    raise error(f"{out} holds {what} made with other settings ({', '.join(changed)}{where}): {consequence}. "
                f"Give another --out, or the same settings ({may_change})")
