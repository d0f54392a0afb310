"""From a genotype to a network, and from a trained weights file back to a ready model.

A ``model.pt`` carries two fingerprints besides its weights (and genotype): ``layout_digest`` over the
tensors' names, shapes and dtypes, and ``genotype_digest`` over the genotype's canonical JSON. An edit
that keeps every shape (say, an edge's input swapped inside a cell) would otherwise load silently and
run the weights of one network as another; with the fingerprints it is refused. Files written before
them still load, with a warning that they cannot be verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from nas_restore.config import ConfigError
from nas_restore.errors import UserError
from nas_restore.genotype import Genotype, GenotypeError
from nas_restore.sources import load_genotype
from search_spaces import space_of, validate_genotype

log = logging.getLogger(__name__)


WEIGHTS_FORMAT = "nas-restore-weights"
WEIGHTS_VERSION = 1
RETRAIN_HINT = "pass the model.pt written by `nas-restore retrain` (or its output folder)"
EDITED_HINT = ("retrain the genotype you want (`nas-restore retrain GENOTYPE --out DIR`), or restore the "
               "original model.pt")


class ModelFileError(UserError, ValueError):
    """A weights file (``model.pt``) that is missing, corrupt, or not one that nas-restore wrote."""


def build_model(genotype: Genotype | str | Path) -> nn.Module:
    """The plain ``nn.Module`` of a genotype (validated against its space first); no NNI at inference."""
    if not isinstance(genotype, Genotype):
        genotype = load_genotype(genotype)
    else:
        validate_genotype(genotype)
    return space_of(genotype).make_network(genotype)


def input_frames(genotype: Genotype) -> int:
    """The frames per window a genotype's network takes: fixed by its weights (1 for image networks)."""
    return int(genotype.space_config.get("frames", 1))


def check_frames(frames: int | None, model_frames: int | None = None, flag: str = "--frames") -> int:
    """``frames`` if a network can take it (odd, >= 1, and the model's own when ``model_frames`` is given),
    else a :class:`UserError` naming the fix; ``None`` gives the model's frames (1 without a model).

    Checked before any network runs: a wrong count otherwise surfaces as a channel-count RuntimeError
    from deep inside the first convolution.
    """
    if frames is None:
        return 1 if model_frames is None else int(model_frames)
    original = frames
    try:
        frames = operator.index(frames) if not isinstance(frames, bool) else None
    except TypeError:
        frames = None
    if frames is None:
        raise UserError(f"{flag} must be a whole number of frames, got {original!r}")
    own = (f"omit {flag} to use the model's own {model_frames}" if model_frames is not None
           else "use 1 for images, or an odd window such as 3 or 5 for video")
    if frames < 1 or frames % 2 == 0:
        raise UserError(f"{flag} must be odd and >= 1 (a window centred on the frame being derained), got "
                        f"{frames}: {own}")
    if model_frames is not None and frames != model_frames:
        raise UserError(f"{flag} {frames} does not match the model, which takes {model_frames} input frame(s) "
                        f"(its genotype's space_config frames; fixed when it was trained): omit {flag} to use "
                        f"its {model_frames}, or retrain a genotype with frames={frames} (e.g. from "
                        f"`nas-restore search --frames {frames}`)")
    return frames


def layout_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted tensor names, shapes and dtypes: which network these weights fit."""
    rows = [[name, list(t.shape), str(t.dtype)] for name, t in sorted(state_dict.items())]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def genotype_digest(genotype: Mapping[str, Any]) -> str:
    """sha256 of a genotype dict's canonical JSON (sorted keys, compact separators): any edit changes it."""
    text = json.dumps(genotype, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_trained(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Genotype]:
    """Rebuild a retrained model from its ``model.pt`` (or the retrain folder holding it).

    The stored genotype and weights are checked against their fingerprints first, so a file whose
    genotype was edited after training is refused rather than run as another network.
    """
    path = _model_file(path)
    blob = _read_blob(path, map_location)
    if "genotype" not in blob:
        raise ModelFileError(f"{path} holds no genotype: it was not written by `nas-restore retrain`; rebuild the "
                             "network with build_model(genotype) and load the state_dict yourself")
    _warn_unverified(path, blob, ("layout_digest", "genotype_digest"))
    genotype = _stored_genotype(path, blob)
    model = build_model(genotype)
    _apply_weights(model, path, blob)
    model.eval()
    return model, genotype


def save_weights(model: nn.Module, path: Path, **meta: Any) -> None:
    """Write ``{"state_dict", "format", "version", "layout_digest", **meta}`` (plus ``genotype_digest`` when
    ``meta`` has a ``genotype``): plain tensors, strings and numbers only, so it loads with
    ``torch.load(weights_only=True)`` and without Lightning or NNI."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # plain NCHW fp32
    if isinstance(meta.get("genotype"), Genotype):
        meta["genotype"] = meta["genotype"].to_dict()
    fingerprints = {"layout_digest": layout_digest(state)}
    if meta.get("genotype") is not None:
        fingerprints["genotype_digest"] = genotype_digest(meta["genotype"])
    torch.save({"state_dict": state, "format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, **meta,
                **fingerprints}, path)


def store_genotype(path: str | Path, genotype: Genotype | Mapping[str, Any]) -> None:
    """Add (or replace) the genotype of a weights file, with its fingerprint: for a file whose weights
    were written before the genotype was at hand (the training core knows no genotype)."""
    path = _model_file(path)
    blob = _read_blob(path, "cpu")
    data = genotype.to_dict() if isinstance(genotype, Genotype) else dict(genotype)
    blob["genotype"], blob["genotype_digest"] = data, genotype_digest(data)
    torch.save(blob, path)


def load_weights(model: nn.Module, path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a ``save_weights`` file into ``model`` (strict); returns the file's metadata."""
    path = _model_file(path)
    blob = _read_blob(path, map_location)
    _warn_unverified(path, blob, ("layout_digest",))
    _apply_weights(model, path, blob)
    return {k: v for k, v in blob.items() if k != "state_dict"}


def _model_file(path: str | Path) -> Path:
    """The weights file a path means (a retrain folder: its model.pt), or a ModelFileError saying why not."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise ModelFileError(f"{path} is a folder without model.pt: {RETRAIN_HINT}")
        path = path / "model.pt"
    if not path.exists():
        raise ModelFileError(f"{path} does not exist: {RETRAIN_HINT}")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a regular file (a device, socket or pipe?): {RETRAIN_HINT}")
    return path


def _read_blob(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The file's top-level dict with a ``state_dict`` of named tensors, or a ModelFileError."""
    blob = _read_weights_file(path, map_location)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        if isinstance(blob, dict) and "genotype" in blob:
            raise ModelFileError(f"{path} holds a genotype but no weights ('state_dict'): it is damaged or was "
                                 f"written by another tool; {RETRAIN_HINT}")
        raise ModelFileError(f"{path} is not a nas-restore weights file (no 'state_dict' key): write it with "
                             f"nas_restore.build.save_weights or retrain")
    if blob.get("format", WEIGHTS_FORMAT) != WEIGHTS_FORMAT:
        raise ModelFileError(f"{path} has format {str(blob['format'])[:40]!r}, not {WEIGHTS_FORMAT!r}: it was "
                             f"written by another tool; {RETRAIN_HINT}")
    state = blob["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelFileError(f"{path}: its 'state_dict' is not a mapping of names to tensors, so the file is "
                             f"damaged or not from nas-restore; {RETRAIN_HINT}")
    return blob


def _warn_unverified(path: Path, blob: dict[str, Any], keys: tuple[str, ...]) -> None:
    """One warning for a file without (some of) its fingerprints: older files load, unverified."""
    missing = [k for k in keys if k not in blob]
    if missing:
        log.warning("%s has no %s (written before nas-restore stored fingerprints, or by another tool): an edit "
                    "of its %s cannot be detected; retrain it to get a file that can be verified", path,
                    " or ".join(missing), "genotype or weights" if len(missing) > 1 else
                    ("weights" if missing[0] == "layout_digest" else "genotype"))


def _stored_genotype(path: Path, blob: dict[str, Any]) -> Genotype:
    """The file's genotype, checked against its fingerprint and its space."""
    raw = blob["genotype"]
    stored = blob.get("genotype_digest")
    if stored is not None:
        try:
            actual = genotype_digest(raw)
        except (TypeError, ValueError):  # not JSON-like at all: certainly not what was saved
            actual = None
        if actual != stored:
            raise ModelFileError(f"{path}: its stored genotype was changed after training (it no longer matches "
                                 f"the fingerprint saved with the weights), so the weights belong to another "
                                 f"network; {EDITED_HINT}")
    try:
        return validate_genotype(Genotype.from_dict(raw))
    except (GenotypeError, ConfigError) as err:
        raise ModelFileError(f"{path} holds a genotype that is not valid ({err}); {EDITED_HINT}") from None
    except UserError:
        raise  # e.g. a space file that is not allowed or not found: its own message names the fix
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # a hostile or damaged entry
        raise ModelFileError(f"{path} holds a genotype that is not valid ({type(err).__name__}: "
                             f"{str(err)[:120]}); {EDITED_HINT}") from None


def _apply_weights(model: nn.Module, path: Path, blob: dict[str, Any]) -> None:
    """``model.load_state_dict`` (strict), after checking the weights against their layout fingerprint."""
    state = blob["state_dict"]
    stored = blob.get("layout_digest")
    if stored is not None and stored != layout_digest(state):
        raise ModelFileError(f"{path} holds the weights of another network: its tensors' names, shapes or dtypes "
                             f"no longer match the layout fingerprint saved with them (the file was changed "
                             f"after training); {EDITED_HINT}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing/unexpected keys or shapes: weights of another network
        first = str(err).strip().splitlines()[0]
        raise ModelFileError(f"{path} holds the weights of another network ({first}); {RETRAIN_HINT} "
                             "together with its own genotype") from None


def _read_weights_file(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load(weights_only=True)``, with a :class:`ModelFileError` naming what the file is instead."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ModelFileError(f"cannot read {path} ({err.strerror}): {RETRAIN_HINT}") from None
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes): its copy or the run that wrote it was interrupted; "
                             f"copy it again or retrain ({RETRAIN_HINT})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch raise many kinds for a foreign file
        raise ModelFileError(f"cannot load {path}: it is {_what_file(path, err)}; {RETRAIN_HINT}") from None


def _what_file(path: Path, err: Exception) -> str:
    """What a file that torch cannot load looks like, from its first bytes and the error."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError as read_err:
        return f"unreadable ({read_err.strerror})"
    if head.lstrip().startswith(b"{"):
        return "a JSON file (a genotype? train it first with `nas-restore retrain GENOTYPE --out DIR`)"
    if head.startswith(b"PK\x03\x04"):  # torch's zip format: whole but unsafe, or cut short
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            return ("a torch file holding Python objects that a safe load (weights_only=True) refuses, e.g. "
                    "torch.save(model) of a whole module; nas-restore loads plain tensors only")
        return ("a damaged or truncated torch file (its zip archive is incomplete: an interrupted copy, "
                "download or save?); copy it again from where it was trained, or retrain")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as bad:  # a character cut by the 512-byte read still counts as text
        text = head[:bad.start].decode("utf-8") if bad.start >= len(head) - 3 and len(head) == 512 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "a text file, not torch weights"
    return f"not a torch weights file ({type(err).__name__})"
