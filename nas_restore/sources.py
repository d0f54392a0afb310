"""From a word on the command line to a genotype: the one resolver that every command uses.

A genotype source is one of:

- a genotype JSON file, or a search run folder holding ``genotype.json``;
- a DARTS text file of ``Genotype(...)`` entries; ``PATH:NAME`` (or ``name=``) picks one of several;
- a built-in reference name (``tmics-heavy``, ``tmics-light``, ``rescnn``, ``prn``: :mod:`search_spaces.reference`);
- ``space:NAME[:PRESET]``: the one architecture of a space without choices (a hand design such as
  ``rescnn`` or ``prn``); a space with choices gives its seed-0 random draw;
- ``random:N`` (``rank`` only): N uniform draws from the space of a ``like`` genotype, at its size;
- ``like-macs:NAME[:PRESET]`` (``rank`` only): a single-frame network of the space ``NAME`` without choices
  (``rescnn``, ``prn``), its width (and if need be its depth) chosen so that its MACs are within
  :data:`LIKE_MACS_TOLERANCE` of the ``like`` genotype's (:func:`macs_matched_genotype`): the
  single-frame baseline "at about the same MACs" as a video network.

Every genotype is checked against its space here (:func:`search_spaces.validate_genotype`), so a
command gets a genotype it can build, or a :class:`~nas_restore.genotype.GenotypeError` that names
the file and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from nas_restore.genotype import Genotype, GenotypeError, read_genotype_file
from nas_restore.profiling import count_flops, count_parameters, input_shape
from search_spaces import find_space, space_of, validate_genotype
from search_spaces.reference import find_reference, reference_names

log = logging.getLogger(__name__)

RUN_GENOTYPE = "genotype.json"  # what a search run folder holds (nas_restore.run_records names the rest)
LIKE_MACS_PREFIX = "like-macs:"
LIKE_MACS_TOLERANCE = 0.10        # a like-macs network's MACs are within this fraction of the like genotype's
WIDTH_FIELD = "channels"          # what like-macs varies first ...
DEPTH_FIELDS = ("blocks", "recursions", "stages")  # ... and then the first of these that the space has
_MAX_WIDTH = 512
_DEPTH_TRIES = 8                  # depths tried beside the preset's, nearest first
_ESTIMATE_SIDE = 16               # MACs are estimated at a smaller size of the same aspect, then checked


def load_genotype(source: str | Path, name: str | None = None, validate: bool = True) -> Genotype:
    """The genotype of one source (file, run folder, ``PATH:NAME``, reference name, ``space:NAME``)."""
    text = str(source)
    path = Path(source)
    if text.startswith("space:") and not path.exists():
        return space_genotype(text)
    if text.startswith("random:") and not path.exists():
        raise GenotypeError(f"{text!r} stands for several genotypes: use it among the entries of "
                            "`nas-restore rank`, or give one genotype file")
    if text.startswith(LIKE_MACS_PREFIX) and not path.exists():
        raise GenotypeError(f"{text!r} is sized like another genotype: use it among the entries of `nas-restore "
                            "rank` (matched to --like or the first genotype file), or in Python "
                            "nas_restore.sources.macs_matched_genotype")
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


def network_macs(genotype: Genotype, height: int, width: int) -> int:
    """Multiply-adds (FLOPs / 2) of one forward pass of the genotype's network on a ``height`` x ``width`` window."""
    model = space_of(genotype).make_network(genotype)
    frames = int(genotype.space_config.get("frames", 1))
    return count_flops(model, input_shape(frames, height, width)) // 2


def is_like_macs(text: str) -> bool:
    """Whether a command-line word is a ``like-macs:NAME[:PRESET]`` entry."""
    return text.startswith(LIKE_MACS_PREFIX) and not Path(text).exists()


def macs_matched_genotype(text: str, like: Genotype, size: tuple[int, int] | list[int],
                          tolerance: float = LIKE_MACS_TOLERANCE, frames: int = 1) -> tuple[Genotype, dict[str, Any]]:
    """``like-macs:NAME[:PRESET]``: a ``frames``-frame network of the space NAME (one without architecture
    choices, e.g. rescnn or prn) whose MACs at ``size`` = [H, W] are within ``tolerance`` of ``like``'s.

    Why: a single-frame baseline beside a video network answers "do the extra frames help?" only at equal
    compute; the video network's MACs include its alignment and fusion, so the baseline gets them as width.
    How: the preset (default ``cpu``) with ``frames``, the width field (:data:`WIDTH_FIELD`) set by bisection
    (MACs grow with width) to the value closest to the target; if that misses the tolerance, the depth field
    (the first of :data:`DEPTH_FIELDS` the space has) is tried from the preset's value outwards. MACs are
    estimated at a reduced size of the same aspect (convolutions' MACs scale with the pixels) and the
    result is counted again at ``size``. Returns the genotype and the match record (``params``, ``macs``,
    ``like_params``, ``like_macs``, ``params_ratio``, ``macs_ratio``, ``tolerance``, the fields chosen);
    a :class:`GenotypeError` names the fix when no width and depth come within the tolerance.
    """
    _, _, rest = text.partition(":")
    name, _, preset = rest.partition(":")
    spec = find_space(name)
    preset = preset or ("cpu" if "cpu" in spec.presets else None)
    base = spec.config(preset, frames=frames)
    try:
        spec.make_space(base)
    except ValueError:
        pass  # no architecture choice: the network is fixed by its config, which this function sizes
    else:
        raise GenotypeError(f"{text}: like-macs sizes a space without architecture choices (rescnn, prn); {name!r} "
                            "has choices: use random:N for draws of a searched space, or space:NAME:PRESET")
    values = base.to_dict()
    if WIDTH_FIELD not in values:
        raise GenotypeError(f"{text}: the {name} space has no {WIDTH_FIELD!r} setting to size it by")
    depth_field = next((f for f in DEPTH_FIELDS if f in values), None)
    h, w = int(size[0]), int(size[1])
    like_macs = network_macs(like, h, w)
    like_params = count_parameters(space_of(like).make_network(like))
    scale = max(1, min(h, w) // _ESTIMATE_SIDE)
    eh, ew = max(8, h // scale), max(8, w // scale)
    pixel_ratio = (h * w) / (eh * ew)
    target = like_macs / pixel_ratio
    cache: dict[tuple[int, int | None], float] = {}

    def genotype_of(width: int, depth: int | None) -> Genotype:
        changed = {**values, WIDTH_FIELD: width, **({depth_field: depth} if depth_field else {})}
        config = spec.config_class.from_dict(changed)
        meta = {"name": f"{name}-like-macs", "strategy": f"space {name}, preset {preset}, sized to the like "
                f"genotype's MACs ({like.genotype_id()})", "like": like.genotype_id()}
        return spec.to_genotype({}, config, meta)

    def estimate(width: int, depth: int | None) -> float:
        key = (width, depth)
        if key not in cache:
            cache[key] = float(network_macs(genotype_of(width, depth), eh, ew))
        return cache[key]

    def best_width(depth: int | None) -> int:
        hi = max(1, int(values[WIDTH_FIELD]))
        while hi < _MAX_WIDTH and estimate(hi, depth) < target:  # doubling: never builds a needlessly wide network
            hi = min(_MAX_WIDTH, 2 * hi)
        lo = 1
        while lo < hi:  # the smallest width reaching the target
            mid = (lo + hi) // 2
            if estimate(mid, depth) >= target:
                hi = mid
            else:
                lo = mid + 1
        return min((c for c in (lo - 1, lo) if c >= 1), key=lambda c: abs(estimate(c, depth) / target - 1))

    depth0 = values.get(depth_field) if depth_field else None
    depths: list[int | None] = [depth0]
    if depth_field:
        depths += sorted((d for d in range(1, 4 * max(int(depth0), 1) + 1) if d != depth0),
                         key=lambda d: (abs(d - int(depth0)), d))[:_DEPTH_TRIES]
    best: tuple[float, int, int | None] | None = None
    for depth in depths:
        width = best_width(depth)
        error = abs(estimate(width, depth) / target - 1)
        if best is None or error < best[0]:
            best = (error, width, depth)
        if error <= tolerance / 2:  # well inside: keep the depth nearest the preset's
            break
    assert best is not None
    _, width, depth = best
    genotype = genotype_of(width, depth)
    macs = network_macs(genotype, h, w)
    params = count_parameters(space_of(genotype).make_network(genotype))
    ratio = macs / like_macs if like_macs else float("inf")
    if abs(ratio - 1) > tolerance:
        raise GenotypeError(f"{text}: no {name} network within {tolerance:.0%} of the like genotype's {like_macs:,} "
                            f"MACs at {h}x{w} (closest: {WIDTH_FIELD}={width}"
                            + (f", {depth_field}={depth}" if depth_field else "") + f", {macs:,} MACs): pick another "
                            "baseline space or preset, or compare at a size where it fits")
    match = {"params": params, "macs": macs, "like_params": like_params, "like_macs": like_macs,
             "params_ratio": params / like_params if like_params else float("inf"), "macs_ratio": ratio,
             "tolerance": tolerance, "size": [h, w], WIDTH_FIELD: width,
             **({depth_field: depth} if depth_field else {})}
    genotype.metadata = {**(genotype.metadata or {}), "note": f"{frames}-frame {name} with {WIDTH_FIELD}={width}"
                         + (f", {depth_field}={depth}" if depth_field else "") + f": {macs:,} MACs at {h}x{w}, "
                         f"{ratio:.3f} x the like genotype's ({like_macs:,})"}
    log.info("%s: %s", text, genotype.metadata["note"])
    return genotype, match


def random_count(text: str) -> int | None:
    """N of ``random:N`` (None for any other source); a clear error for a bad N."""
    if not text.startswith("random:") or Path(text).exists():
        return None
    count = text.partition(":")[2]
    if not count.isdigit() or int(count) < 1:
        raise GenotypeError(f"{text!r}: write random:N with N >= 1 (e.g. random:3)")
    return int(count)


__all__ = ["load_genotype", "with_frames", "source_label", "random_genotypes", "random_genotypes_where",
           "space_genotype", "random_count", "RUN_GENOTYPE", "macs_matched_genotype", "is_like_macs", "network_macs",
           "LIKE_MACS_PREFIX", "LIKE_MACS_TOLERANCE"]
