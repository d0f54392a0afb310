"""Score a folder of rainy/clean pairs (images or video clips), with or without a model.

``evaluate_folder(root)`` gives the "input" row of every deraining table (rainy input against clean
target); ``evaluate_folder(root, model)`` runs the model on full frames and scores its outputs, with the
input scores alongside, under one :class:`~nas_restore.metrics.Protocol` that the summary names.
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
from nas_restore.data.folders import VideoClipFolder, open_dataset
from nas_restore.device import resolve_device
from nas_restore.metrics import Protocol, psnr, ssim
from nas_restore.temporal import warping_errors

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


__all__ = ["EvaluationResult", "evaluate_folder", "score_pair"]
