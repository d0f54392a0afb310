"""Score a folder of rainy/clean pairs (images or video clips), with or without a model.

``evaluate_folder(root)`` gives the "input" row of every deraining table (rainy input against clean
target); ``evaluate_folder(root, model)`` runs the model on full frames and scores its outputs, with the
input scores alongside, under one :class:`~nas_restore.metrics.Protocol` that the summary names.
``evaluate_frames(folder[, model])`` scores a rainy video without targets (real rain): the no-reference
temporal measures of :func:`nas_restore.temporal.no_reference_temporal`, for the input and the output.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from skimage import io
from tqdm.auto import tqdm

from nas_restore.build import check_frames
from nas_restore.data.folders import (PAIR_DIR_NAMES, DataError, FrameSequence, VideoClipFolder, list_images,
                                      open_dataset)
from nas_restore.device import resolve_device
from nas_restore.metrics import Protocol, psnr, ssim
from nas_restore.temporal import SCENE_WINDOW, no_reference_temporal, warping_errors

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Per-item scores and their means. ``summary`` has ``psnr``, ``ssim``, ``count``, ``protocol`` (and
    ``psnr_input``, ``ssim_input`` when a model was run; ``psnr``/``ssim`` are then the model's)."""

    per_item: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Summary and per-item rows as a JSON document (inf / nan written as strings)."""
        rows = self.per_item.to_dict(orient="records")
        return json.dumps({"summary": _jsonable(self.summary), "per_item": _jsonable(rows)}, indent=2)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``per_item.csv`` and ``summary.json`` into ``out_dir``; returns the folder."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.per_item.to_csv(out / "per_item.csv", index=False)
        (out / "summary.json").write_text(json.dumps(_jsonable(self.summary), indent=2) + "\n")
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).clamp(0, 1).permute(1, 2, 0).numpy()


def score_pair(output: torch.Tensor, target: torch.Tensor, protocol: Protocol = Protocol()) -> tuple[float, float]:
    """PSNR (dB; ``inf`` when identical) and SSIM of one ``[3, H, W]`` frame in [0, 1] (a model's output or
    the rainy input) against its clean target: the one way the toolkit scores an item."""
    out, clean = _to_hwc(output), _to_hwc(target)
    return psnr(out, clean, protocol), ssim(out, clean, protocol)


def _save_png(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(path, np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), check_contrast=False)


WARP_ERROR_NAME = ("warping error (Lai et al. 2018): mean squared RGB difference between frame t and frame t-1 "
                   "warped onto it, over non-occluded pixels; flow and occlusion from the clean frames")


def _warp_columns(prev: dict[str, torch.Tensor] | None, cur: dict[str, torch.Tensor]) -> dict[str, float]:
    if prev is None:
        errors = {k: math.nan for k in cur}
    else:
        errors = warping_errors(prev, cur)
    main = errors["output"] if "output" in cur else errors["input"]
    return {"warp_error": main, "warp_error_input": errors["input"], "warp_error_clean": errors["clean"]}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def evaluate_folder(root: str | Path, model: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                    protocol: Protocol = Protocol(), frames: int | None = None, device: str | torch.device = "cpu",
                    save_outputs: str | Path | None = None, split: str | None = None,
                    progress: bool = True, temporal: bool = True,
                    model_frames: int | None = None) -> EvaluationResult:
    """Score every item of an image-pair or video-clip folder (full frames, no crops).

    model: ``None`` scores the rainy input (centre frame) against the target; otherwise any callable
        taking ``[1, T, 3, H, W]`` and returning ``[1, 3, H, W]``, run under ``torch.no_grad()`` (an
        ``nn.Module`` is moved to ``device`` and put in eval mode for the run, its mode restored after).
    frames: window length T given to the model (video clips: neighbours, edges replicated; image pairs:
        the image repeated); odd and >= 1. ``None``: ``model_frames``, or 1.
    model_frames: the frames the model was trained on (:func:`nas_restore.build.input_frames` of its
        genotype), when known: a different ``frames`` is refused before the model runs.
    Video clips also get the *warping error* (Lai et al., ECCV 2018; see :mod:`nas_restore.temporal`) of
    each frame against the previous one of its clip: ``warp_error`` (the model's output, or the input when
    there is no model), ``warp_error_input`` and ``warp_error_clean`` (the floor flow errors leave); a
    clip's first frame has none (NaN) and the means skip it. ``temporal=False`` turns it off.
    save_outputs: folder for the model's outputs as 8-bit PNGs (``<name>.png``; clips ``<clip>/<frame>.png``).
    """
    frames = check_frames(frames, model_frames if model is not None else None, flag="frames")
    dataset = open_dataset(root, frames=frames, split=split)
    dev = resolve_device(str(device)) if model is not None else torch.device("cpu")
    out_dir = Path(save_outputs) if save_outputs is not None else None
    if out_dir is not None and model is None:
        log.warning("save_outputs=%s ignored: there is no model to produce outputs", out_dir)
        out_dir = None
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.to(dev).eval()
    rows: list[dict[str, Any]] = []
    video = isinstance(dataset, VideoClipFolder) and temporal
    previous: tuple[str, dict[str, torch.Tensor]] | None = None
    try:
        with torch.no_grad():
            for i in tqdm(range(len(dataset)), desc=f"evaluate {Path(root).name}", disable=not progress,
                          unit="frame" if isinstance(dataset, VideoClipFolder) else "image"):
                window, target = dataset[i]
                name = dataset.names[i]
                rainy = window[window.shape[0] // 2]
                row: dict[str, Any] = {"name": name}
                if model is None:
                    row["psnr"], row["ssim"] = score_pair(rainy, target, protocol)
                else:
                    output = model(window.unsqueeze(0).to(dev))
                    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, *target.shape):
                        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                        raise ValueError(f"the model returned {shape} for input {tuple(window.unsqueeze(0).shape)} "
                                         f"({name}); expected [1, 3, H, W] = {(1, *target.shape)}")
                    output = output.clamp(0, 1)
                    row["psnr"], row["ssim"] = score_pair(output[0], target, protocol)
                    row["psnr_input"], row["ssim_input"] = score_pair(rainy, target, protocol)
                    if out_dir is not None:
                        _save_png(_to_hwc(output[0]), out_dir / f"{name}.png")
                if video:
                    clip = dataset.index[i][0]
                    frames_now = {"clean": target.unsqueeze(0).float().cpu(),
                                  "input": window[window.shape[0] // 2].unsqueeze(0).float().cpu()}
                    if model is not None:
                        frames_now["output"] = output.float().cpu()
                    row.update(_warp_columns(previous[1] if previous and previous[0] == clip else None,
                                             frames_now))
                    previous = (clip, frames_now)
                rows.append(row)
    finally:
        if was_training:
            model.train()
    per_item = pd.DataFrame(rows)
    summary: dict[str, Any] = {"psnr": _mean(per_item["psnr"].tolist()), "ssim": _mean(per_item["ssim"].tolist()),
                               "count": len(rows), "protocol": protocol.describe()}
    if model is not None:
        summary["psnr_input"] = _mean(per_item["psnr_input"].tolist())
        summary["ssim_input"] = _mean(per_item["ssim_input"].tolist())
    if video:
        for column in ("warp_error", "warp_error_input", "warp_error_clean"):
            if column in per_item:
                summary[column] = float(per_item[column].mean(skipna=True))
        summary["temporal_measure"] = WARP_ERROR_NAME
    log.info("evaluated %d item(s) of %s: PSNR %.3f dB, SSIM %.4f (%s)", len(rows), root, summary["psnr"],
             summary["ssim"], summary["protocol"])
    return EvaluationResult(per_item=per_item, summary=summary)


def is_frame_folder(root: str | Path) -> bool:
    """Whether ``root`` is a folder of frames without targets (images directly in it, no input/+target/ or
    rainy/+clean/ folders): a real rainy video, scored by :func:`evaluate_frames`."""
    root = Path(root)
    if not root.is_dir() or any((root / a).is_dir() for pair in PAIR_DIR_NAMES for a in pair):
        return False
    return bool(list_images(root))


def evaluate_frames(folder: str | Path, model: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                    frames: int | None = None, device: str | torch.device = "cpu",
                    save_outputs: str | Path | None = None, progress: bool = True, warp: bool = True,
                    window: int = SCENE_WINDOW, model_frames: int | None = None) -> EvaluationResult:
    """No-reference temporal measures of a rainy video given as a folder of frames (no targets), for the
    rainy input and, with a ``model``, its output (see :func:`nas_restore.temporal.no_reference_temporal`).

    The model (as in :func:`evaluate_folder`) derains every frame from the window of ``frames`` frames
    centred on it, edges replicated; its outputs are measured as 8-bit frames (what ``derain`` writes), kept
    in memory (H x W x 3 bytes a frame) or written to ``save_outputs`` as PNGs with the input's names.
    ``per_item`` has a row per consecutive pair (``frame`` is the later one); ``summary`` has ``flicker``
    and ``warp_error`` (the output's, or the input's without a model), ``flicker_input``,
    ``warp_error_input``, ``static_share``, ``count`` (frames) and the measures' descriptions.
    ``warp=False`` skips the warping error (its flow costs about a second per pair at 320x480).
    """
    frames = check_frames(frames, model_frames if model is not None else None, flag="frames")
    folder = Path(folder)
    if not is_frame_folder(folder):
        raise DataError(f"{folder} is not a folder of frames without targets: give the folder that holds the video's "
                        f"frames as images (for input/+target/ pairs use evaluate_folder / --data with targets)")
    sequence = FrameSequence(folder, frames=frames)
    out_dir = Path(save_outputs) if save_outputs is not None else None
    if out_dir is not None and model is None:
        log.warning("save_outputs=%s ignored: there is no model to produce outputs", out_dir)
        out_dir = None
    videos: dict[str, list[Any]] = {"input": list(sequence.paths)}
    if model is not None:
        dev = resolve_device(str(device))
        was_training = isinstance(model, torch.nn.Module) and model.training
        if isinstance(model, torch.nn.Module):
            model.to(dev).eval()
        outputs: list[Any] = []
        try:
            with torch.no_grad():
                for i in tqdm(range(len(sequence)), desc=f"derain {folder.name}", disable=not progress, unit="frame"):
                    window_t = sequence[i]
                    output = model(window_t.unsqueeze(0).to(dev))
                    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, *window_t.shape[1:]):
                        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                        raise ValueError(f"the model returned {shape} for input {tuple(window_t.unsqueeze(0).shape)}; "
                                         f"expected [1, 3, H, W]")
                    img = np.round(_to_hwc(output[0]) * 255).astype(np.uint8)
                    if out_dir is not None:
                        path = out_dir / f"{sequence.names[i]}.png"
                        _save_png(img / 255.0, path)
                        outputs.append(path)
                    else:
                        outputs.append(img)
        finally:
            if was_training:
                model.train()
        videos["output"] = outputs
    measured = no_reference_temporal(videos, reference="input", window=window, warp=warp, names=sequence.names)
    main = "output" if model is not None else "input"
    summary: dict[str, Any] = {
        "flicker": measured.flicker[main], "warp_error": measured.warp_error[main],
        "flicker_input": measured.flicker["input"], "warp_error_input": measured.warp_error["input"],
        "static_share": measured.static_share, "count": len(sequence), "pairs": measured.pairs,
        "scene_window": window, "reference": "none (no targets): no-reference temporal measures",
        **{k: v for k, v in measured.summary().items() if k.endswith("_measure") or k == "units"}}
    log.info("measured %d frame(s) of %s without targets: flicker %.5f (input %.5f), static share %.2f", len(sequence),
             folder, summary["flicker"], summary["flicker_input"], summary["static_share"])
    return EvaluationResult(per_item=measured.per_pair, summary=summary)


__all__ = ["EvaluationResult", "evaluate_folder", "evaluate_frames", "is_frame_folder", "score_pair"]
