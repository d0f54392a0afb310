"""From a word on the command line to a genotype: the one resolver that every command uses.

A genotype source is one of:

- a genotype JSON file, or a search run folder holding ``genotype.json``;
- a DARTS text file of ``Genotype(...)`` entries; ``PATH:NAME`` (or ``name=``) picks one of several;
- a built-in reference name (``tmics-heavy``, ``tmics-light``, ``rescnn``, ``prn``: :mod:`search_spaces.reference`);
- ``space:NAME[:PRESET]``: the one architecture of a space without choices (a hand design such as
  ``rescnn`` or ``prn``); a space with choices gives its seed-0 random draw;
- ``random:N`` (``rank`` only): N uniform draws from the space of a ``like`` genotype, at its size.

Every genotype is checked against its space here (:func:`search_spaces.validate_genotype`), so a
command gets a genotype it can build, or a :class:`~nas_restore.genotype.GenotypeError` that names
the file and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from nas_restore.genotype import Genotype, GenotypeError, read_genotype_file
from search_spaces import find_space, space_of, validate_genotype
from search_spaces.reference import find_reference, reference_names

RUN_GENOTYPE = "genotype.json"  # what a search run folder holds (nas_restore.run_records names the rest)


def load_genotype(source: str | Path, name: str | None = None, validate: bool = True) -> Genotype:
    """The genotype of one source (file, run folder, ``PATH:NAME``, reference name, ``space:NAME``)."""
    text = str(source)
    path = Path(source)
    if text.startswith("space:") and not path.exists():
        return space_genotype(text)
    if text.startswith("random:") and not path.exists():
        raise GenotypeError(f"{text!r} stands for several genotypes: use it among the entries of "
                            "`nas-restore rank`, or give one genotype file")
    if not path.exists() and ":" in text and name is None:
        head, _, tail = text.rpartition(":")
        if Path(head).exists():
            path, name = Path(head), tail
    if path.is_dir():
        if not (path / RUN_GENOTYPE).is_file():
            raise GenotypeError(f"{path} is a folder without {RUN_GENOTYPE}: give a search run folder "
                                f"(runs/NAME), a {RUN_GENOTYPE} or a DARTS Genotype(...) text file")
        path = path / RUN_GENOTYPE
    if not path.exists():
        reference = find_reference(text)
        if reference is not None:
            return reference
        raise GenotypeError(f"genotype file {path} does not exist: give the {RUN_GENOTYPE} of a search run "
                            f"(runs/NAME/{RUN_GENOTYPE}), its folder, or a built-in name "
                            f"({', '.join(reference_names())})")
    genotype = read_genotype_file(path, name=name)
    if validate:
        try:
            validate_genotype(genotype)
        except GenotypeError as err:
            raise GenotypeError(f"{path}: {err}") from None
    return genotype


def source_label(source: str, genotype: Genotype) -> str:
    """A short name for a source's row or folder: the genotype's own name, else the run's or file's."""
    name = (genotype.metadata or {}).get("name")
    if name:
        return str(name)
    path = Path(source)
    if not path.exists() and ":" in source:
        path = Path(source.rpartition(":")[0])
    if path.is_dir():
        return path.name
    if path.name == RUN_GENOTYPE:
        parent = path.parent
        return parent.parent.name if parent.name == "search" and parent.parent.name else parent.name
    return path.stem


def random_genotypes(like: Genotype, count: int, first_seed: int = 0) -> list[Genotype]:
    """``count`` architectures drawn uniformly from ``like``'s space at ``like``'s space config."""
    from nas_restore.nni_layer.space import random_architecture  # NNI is heavy: only for draws

    spec = space_of(like)
    space_config = spec.config_class.from_dict(dict(like.space_config))
    out = []
    for seed in range(first_seed, first_seed + count):
        space = spec.make_space(space_config)  # a fresh space per draw: NNI keeps sampled values on it
        arch = random_architecture(space, seed=seed)
        out.append(spec.to_genotype(arch, space_config, {"name": f"random-{seed}", "strategy": "uniform random "
                                                         "sample (rank)", "seed": seed, "nni_arch": arch}))
    return out


def random_genotypes_where(like: Genotype, count: int, keep: Callable[[Genotype], bool], first_seed: int = 0,
                           max_tries: int | None = None) -> tuple[list[Genotype], int]:
    """Up to ``count`` draws of :func:`random_genotypes` (seeds ``first_seed``, ``first_seed + 1``, ...) for
    which ``keep`` is true, trying at most ``max_tries`` seeds (default ``50 * count``); also the number tried.

    Why: a random baseline drawn uniformly may be much smaller or larger than the genotype it is compared
    with, and then measures size, not architecture; ``keep`` (e.g. parameters and MACs within 15 % of the
    searched genotype's) makes the draws comparable. Fewer than ``count`` come back when the tries run out:
    the caller says so."""
    tries = 50 * count if max_tries is None else max_tries
    kept: list[Genotype] = []
    tried = 0
    for seed in range(first_seed, first_seed + tries):
        if len(kept) >= count:
            break
        tried += 1
        genotype = random_genotypes(like, 1, seed)[0]
        if keep(genotype):
            kept.append(genotype)
    return kept, tried


def space_genotype(text: str) -> Genotype:
    """``space:NAME[:PRESET]``: the one architecture of a space without choices (a hand-designed baseline
    such as ``rescnn``); a space with choices gives its seed-0 random draw instead."""
    from nas_restore.nni_layer.space import random_architecture  # NNI is heavy: only for draws

    _, _, rest = text.partition(":")
    name, _, preset = rest.partition(":")
    spec = find_space(name)
    preset = preset or ("cpu" if "cpu" in spec.presets else None)
    space_config = spec.config(preset)
    meta: dict[str, Any] = {"name": name if not preset else f"{name}-{preset}",
                            "strategy": f"space {name}, preset {preset}"}
    try:
        space = spec.make_space(space_config)
    except ValueError:  # a space without architecture choices (rescnn): the architecture is the space itself
        return spec.to_genotype({}, space_config, meta)
    arch = random_architecture(space, seed=0)
    return spec.to_genotype(arch, space_config, {**meta, "strategy": meta["strategy"] + ", seed-0 random draw"})


def with_frames(genotype: Genotype, frames: int) -> Genotype:
    """The genotype taking ``frames`` input frames, where its network has that setting (a clear error otherwise)."""
    if "frames" not in genotype.space_config:
        raise GenotypeError(f"the {genotype.space} network has no frames setting (its space_config: "
                            f"{', '.join(sorted(genotype.space_config))}): it takes the frames it was built for")
    if int(genotype.space_config["frames"]) == frames:
        return genotype
    spec = space_of(genotype)
    if not genotype.cells:  # a space without choices: its genotype repeats its config
        space_config = spec.config_class.from_dict({**genotype.space_config, "frames": frames})
        return spec.to_genotype({}, space_config, dict(genotype.metadata or {}))
    changed = genotype.copy()
    changed.space_config = {**genotype.space_config, "frames": frames}
    if frames == 1 and "alignment" in changed.macro:
        changed.macro = {**changed.macro, "alignment": "none"}  # a single frame has nothing to align
    return spec.validate_genotype(changed)


def random_count(text: str) -> int | None:
    """N of ``random:N`` (None for any other source); a clear error for a bad N."""
    if not text.startswith("random:") or Path(text).exists():
        return None
    count = text.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
        raise GenotypeError(f"{text!r}: write random:N with N >= 1 (e.g. random:3)")
    return int(count)


__all__ = ["load_genotype", "with_frames", "source_label", "random_genotypes", "random_genotypes_where",
           "space_genotype", "random_count", "RUN_GENOTYPE"]
