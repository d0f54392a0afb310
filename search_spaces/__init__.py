"""Search spaces, found by name or by file.

A space registers a :class:`SpaceSpec`: how to build its NNI ``ModelSpace`` for a search, how to turn
an NNI architecture dict into a :class:`~nas_restore.genotype.Genotype`, and how to build the plain
``nn.Module`` of a genotype (no NNI at inference).

A user's own space needs no registration: ``find_space("path/to/file.py:ClassName")`` imports the
file and wraps the NNI ``ModelSpace`` subclass in a :class:`SpaceSpec` (:func:`user_space`). A
genotype's ``space`` field is resolved by :func:`space_of`, which never imports a file that the user
did not name: opening someone else's genotype or model file must not run their code. The user's consent
is naming the file (``find_space``, ``--space path/to/file.py:ClassName``, :func:`allow_space_file`). Its
genotype is a generic one: NNI ``Cell`` choices become cells, every other choice goes to ``macro``.
Its network is the user's class frozen on the architecture (a user's space has no plain twin), so it
may still hold NNI classes; its weights are plain torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nas_restore.config import ConfigError
from nas_restore.errors import UserError, did_you_mean
from nas_restore.genotype import Genotype, GenotypeError, cells_from_nni_arch, cells_to_nni_arch
from nas_restore.registry import Registry


def _load_builtin() -> None:
    # always (imports are cached): importing one space module directly must not hide the others
    from search_spaces import baselines, prn, progressive, rdmc, rrgnet, tmics  # noqa: F401  (register themselves)


SPACES: Registry["SpaceSpec"] = Registry("search space", listing="nas-restore spaces", load=_load_builtin)
_USER_SPACES: dict[tuple[str, str, float], "SpaceSpec"] = {}
_ALLOWED_SPACE_FILES: set[Path] = set()  # space files the user named in this process (may be imported)


@dataclass
class SpaceSpec:
    name: str
    description: str
    config_class: Any                                    # has from_dict(values) -> config (with .frames, .to_dict())
    make_space: Callable[..., Any]                       # (config) -> nni ModelSpace
    make_network: Callable[[Genotype], Any]              # genotype -> plain nn.Module
    to_genotype: Callable[[dict, Any, dict], Genotype]   # (nni arch dict, config, metadata) -> Genotype
    validate_genotype: Callable[[Genotype], Genotype]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    to_nni_arch: Callable[[Genotype], dict[str, Any]] | None = None  # genotype -> NNI architecture dict
    macro_graph: Callable[[Genotype], Any] | None = None  # genotype -> networkx drawing of its macro network

    def config(self, preset: str | None = None, **overrides: Any) -> Any:
        """The space's config: its defaults, then a named preset, then explicit overrides."""
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in self.presets:
                close = did_you_mean(preset, self.presets)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"space {self.name!r} has no preset {preset!r}; presets: {', '.join(self.presets)}"
                                  + hint)
            values.update(self.presets[preset])
        values.update(overrides)
        return self.config_class.from_dict(values)


class SpaceLoadError(UserError, ValueError):
    """A user's space file that cannot be used; the message names the file, the class and the fix."""


def register_space(spec: SpaceSpec) -> SpaceSpec:
    return SPACES.register(spec.name, spec, replace=True)  # replace: a space module may be reloaded


def find_space(name: str, missing_ok: bool = False) -> SpaceSpec | None:
    """A registered space by name (``tmics``), or a user's ``path/to/file.py:ClassName``."""
    spec = SPACES.find(name)
    if spec is not None:
        return spec
    if is_space_path(name):
        if missing_ok and not _space_file(name).is_file():
            return None
        allow_space_file(name)
        return user_space(name)
    if missing_ok:
        return None
    return SPACES.lookup(name, extra=" (or give your own as path/to/file.py:ClassName)")


def allow_space_file(name: str) -> None:
    """Consent to import the space file of ``path/to/file.py:ClassName`` when a genotype names it."""
    _ALLOWED_SPACE_FILES.add(_space_file(name).resolve())


def space_of(genotype: Genotype | str, missing_ok: bool = False) -> SpaceSpec | None:
    """The space a genotype (or a genotype's ``space`` field) names.

    A registered name is looked up; a ``file.py:Class`` is imported only with the user's consent (see the
    module docstring), since the genotype may come from anyone. ``missing_ok``: None for a space that is
    not ours (a foreign genotype, e.g. published DARTS cells, checked for structure only).
    """
    name = genotype.space if isinstance(genotype, Genotype) else genotype
    if SPACES.find(name) is not None or not is_space_path(name):
        return find_space(name, missing_ok=missing_ok)
    path = _space_file(name)
    if missing_ok and not path.is_file():
        return None
    if path.resolve() not in _ALLOWED_SPACE_FILES:
        raise SpaceLoadError(f"the genotype's space {name!r} is a Python file, and nas-restore does not run code "
                             "that a genotype or model file names: if you trust that file, pass "
                             f"--space {name} (in Python: search_spaces.allow_space_file({name!r}))")
    return user_space(name)


def _space_file(name: str) -> Path:
    return Path(name.rpartition(":")[0] if ":" in name else name).expanduser()


def list_spaces() -> list[SpaceSpec]:
    return [SPACES[n] for n in sorted(SPACES.names())]


def validate_genotype(genotype: Genotype) -> Genotype:
    """Check a genotype's ops and macro choices against its space, when the space is one of ours.

    A foreign genotype (e.g. published DARTS cells) is checked for structure only.
    """
    spec = space_of(genotype, missing_ok=True)
    if spec is None:
        return genotype.validate()
    return spec.validate_genotype(genotype)


# --------------------------------------------------------------------------------------------------
# a user's own space from a file


def is_space_path(name: str) -> bool:
    """``something.py:ClassName`` (or ``something.py`` alone, which then asks for the class)."""
    file_part = name.rpartition(":")[0] if ":" in name else name
    return file_part.endswith(".py")


@dataclass
class UserSpaceConfig:
    """A user space's settings: the keyword arguments of its constructor, plus the frames it reads."""

    settings: dict[str, Any] = field(default_factory=dict)
    frames: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.settings)


class _UserConfigFactory:
    """``from_dict`` for a user space: checks the keys against the constructor's parameters."""

    def __init__(self, space_class: type, where: str):
        from nas_restore.nni_layer.space import space_init_signature  # NNI is heavy: only for user spaces

        self.where = where
        self.parameters = {n: p for n, p in space_init_signature(space_class).parameters.items() if n != "self"}
        self.takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self.parameters.values())
        self.class_frames = getattr(space_class, "frames", None)

    def from_dict(self, values: dict[str, Any]) -> UserSpaceConfig:
        known = [n for n, p in self.parameters.items()
                 if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        unknown = [k for k in values if k not in known]
        if unknown and not self.takes_any:
            parts = []
            for key in unknown:
                close = did_you_mean(key, known, n=1)
                parts.append(f"space.{key}" + (f" (did you mean space.{close[0]}?)" if close else ""))
            raise ConfigError(f"unknown setting(s) {', '.join(parts)} for {self.where}; its constructor takes "
                              f"{', '.join(known) or 'no arguments'}")
        missing = [n for n, p in self.parameters.items() if p.default is inspect.Parameter.empty
                   and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                   and n not in values]
        if missing:
            raise ConfigError(f"{self.where} needs the setting(s) {', '.join(missing)}: give them in "
                              "space_settings (YAML) or as overrides")
        return UserSpaceConfig(settings=dict(values), frames=self._frames(values))

    def _frames(self, values: dict[str, Any]) -> int:
        """The window length the data loader must give: ``frames`` setting, its default, or the class's."""
        frames = values.get("frames")
        if frames is None and "frames" in self.parameters:
            default = self.parameters["frames"].default
            frames = None if default is inspect.Parameter.empty else default
        if frames is None:
            frames = self.class_frames if isinstance(self.class_frames, int) else 1
        if not isinstance(frames, int) or frames < 1 or frames % 2 == 0:
            raise ConfigError(f"{self.where}: frames must be an odd integer >= 1 (a window centred on t), "
                              f"got {frames!r}")
        return frames


def user_space(spec: str) -> SpaceSpec:
    """Wrap the NNI ``ModelSpace`` class ``path/to/file.py:ClassName`` in a :class:`SpaceSpec`."""
    from nas_restore.nni_layer.space import check_architecture, frozen_model  # NNI is heavy: only here

    space_class, name = load_space_class(spec)
    path = Path(name.rpartition(":")[0]).resolve()
    key = (str(path), space_class.__name__, path.stat().st_mtime)
    if key in _USER_SPACES:
        return _USER_SPACES[key]
    where = f"space {name}"
    presets = {"cpu": {}}  # the default preset of `nas-restore search`: the constructor's own defaults
    presets.update(getattr(space_class, "PRESETS", None) or {})
    doc = inspect.getdoc(space_class) or f"user space {space_class.__name__}"

    def make_space(config: UserSpaceConfig) -> Any:
        return space_class(**config.settings)

    def to_genotype(arch: dict[str, Any], config: UserSpaceConfig, metadata: dict[str, Any] | None = None) -> Genotype:
        cells, macro = generic_cells(arch)
        genotype = Genotype(space=name, cells=cells, macro=macro, space_config=config.to_dict(),
                            metadata=dict(metadata or {}))
        return validate_genotype(genotype)

    def to_nni_arch(genotype: Genotype) -> dict[str, Any]:
        return {**cells_to_nni_arch(genotype.cells), **genotype.macro}

    def validate_genotype(genotype: Genotype) -> Genotype:
        genotype.validate()
        config = config_factory.from_dict(genotype.space_config)
        problem = check_architecture(space_class(**config.settings), to_nni_arch(genotype))
        if problem:
            raise GenotypeError(f"the genotype does not fit {where}: {problem}")
        return genotype

    def make_network(genotype: Genotype) -> Any:
        config = config_factory.from_dict(genotype.space_config)
        return frozen_model(space_class, to_nni_arch(genotype), config.settings)

    config_factory = _UserConfigFactory(space_class, where)
    result = SpaceSpec(name=name, description=doc.splitlines()[0], config_class=config_factory,
                       make_space=make_space, make_network=make_network, to_genotype=to_genotype,
                       validate_genotype=validate_genotype, presets=presets, to_nni_arch=to_nni_arch)
    _USER_SPACES[key] = result
    return result


def load_space_class(spec: str) -> tuple[type, str]:
    """Import ``path/to/file.py:ClassName``; returns the class and its portable name.

    The name (what a genotype stores as its ``space``) gives the file relative to the working directory,
    so that a genotype names no folder of its author's machine; run later commands from the same folder
    (or give the space file's path again).
    """
    from nas_restore.nni_layer.space import is_model_space_class  # NNI is heavy: only for user spaces

    file_part, sep, class_name = spec.rpartition(":")
    if not sep:
        file_part, class_name = spec, ""
    path = Path(file_part).expanduser()
    if not path.is_file():
        raise SpaceLoadError(f"search space file {path} does not exist (from {spec!r}); give "
                             "path/to/file.py:ClassName, the path relative to where you run the command")
    path = path.resolve()
    module = _import_file(path)
    spaces = sorted(n for n, obj in vars(module).items()
                    if is_model_space_class(obj) and obj.__module__ == module.__name__)
    if not class_name:
        raise SpaceLoadError(f"{spec!r} names no class: write {file_part}:ClassName"
                             + (f" (its model spaces: {', '.join(spaces)})" if spaces else ""))
    if not hasattr(module, class_name):
        close = did_you_mean(class_name, spaces or list(vars(module)), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SpaceLoadError(f"{path} has no class {class_name!r}.{hint} Model spaces defined there: "
                             f"{', '.join(spaces) or 'none'}")
    space_class = getattr(module, class_name)
    if not is_model_space_class(space_class):
        kind = type(space_class).__name__ if not isinstance(space_class, type) else f"class {space_class.__name__}"
        raise SpaceLoadError(f"{path}:{class_name} is a {kind}, not an NNI model space: derive it from "
                             "nas_restore.nni_layer.ModelSpace (nni.nas.nn.pytorch.ModelSpace) and put its choices "
                             "on LayerChoice / InputChoice / Cell")
    return space_class, f"{Path(os.path.relpath(path)).as_posix()}:{class_name}"


def _import_file(path: Path) -> Any:
    """Import a .py file as a module of its own (registered in ``sys.modules``: NNI and pickling need it)."""
    module_name = "nas_restore_user_space_" + hashlib.sha1(str(path).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SpaceLoadError(f"cannot import {path}: is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001  (any error in the user's file: say where it came from)
        del sys.modules[module_name]
        raise SpaceLoadError(f"importing {path} failed: {type(err).__name__}: {err}") from err
    return module


_CELL_KEY = re.compile(r"^(?P<cell>.+)/(?:op|input)_(?P<node>\d+)_\d+$")


def generic_cells(arch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """NNI ``Cell`` keys -> cells (each with its own number of inputs), everything else -> macro."""
    by_cell: dict[str, dict[str, Any]] = {}
    macro: dict[str, Any] = {}
    for key, value in arch.items():
        m = _CELL_KEY.match(key)
        if m:
            by_cell.setdefault(m["cell"], {})[key] = value
        else:
            macro[key] = value
    cells = {}
    for name, keys in by_cell.items():
        # NNI numbers a cell's nodes after its inputs: the first node number is the number of inputs
        n_inputs = min(int(_CELL_KEY.match(k)["node"]) for k in keys)
        found, rest = cells_from_nni_arch(keys, n_inputs=n_inputs)
        cells.update(found)
        macro.update(rest)
    return cells, macro


__all__ = ["SPACES", "SpaceSpec", "SpaceLoadError", "UserSpaceConfig", "register_space", "find_space", "list_spaces",
           "validate_genotype",
           "user_space", "load_space_class", "generic_cells", "GenotypeError"]
