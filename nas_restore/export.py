"""Export a retrained model to a file that runs with torch alone (no NNI, no nas-restore).

``torch.export`` first (``.pt2``: load with ``torch.export.load(path).module()``), with height and width
dynamic where the network allows it; if export fails, ``torch.jit.trace`` (load with ``torch.jit.load``),
with a message saying so. Either way the exported program is checked against the eager model on a
second input of another size (or the same size when the shapes had to be fixed): a network that runs
numpy inside (the TMICS space's classical-flow alignment) would be traced with its flows frozen as
constants, and that silent wrong answer is refused with an error.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas_restore.build import input_frames, load_trained
from nas_restore.errors import UserError
from nas_restore.outputs import check_parents

log = logging.getLogger(__name__)

TOLERANCE = 1e-4


class ExportError(UserError, ValueError):
    """A network that cannot be exported faithfully (the message says what to ship instead)."""


@dataclass
class ExportResult:
    path: Path
    method: str            # "torch.export" or "torch.jit.trace"
    dynamic: bool          # height/width may differ from the example
    example_shape: tuple[int, ...]
    max_abs_error: float   # against the eager model on the check input
    message: str = ""


def _check(loaded, model: nn.Module, shape: tuple[int, ...]) -> float:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float((loaded(x) - model(x)).abs().max())


def check_export_target(out: str | Path, height: int, width: int) -> Path:
    """The output file, once the example size and ``out`` are known to work: a user's mistake is named
    before the model is loaded or traced (minutes of work for a large network), not after."""
    for name, value in (("--height", height), ("--width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ExportError(f"{name} must be a whole number of pixels (at least 16), got {value!r}")
    if min(height, width) < 16:
        raise ExportError(f"the example input must be at least 16x16 px, got height={height} width={width}: "
                          "raise --height/--width")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is an existing folder: give a file path for the exported program, e.g. "
                        f"--out {out / 'model.pt2'}")
    if out.exists() and not out.is_file():
        raise UserError(f"--out {out} exists and is not a regular file: give another --out")
    check_parents(out, "--out", writable=True)
    return out


def export_model(model: nn.Module, frames: int, out: str | Path, height: int = 64, width: int = 64) -> ExportResult:
    """Export ``model`` ([1, T, 3, H, W] -> [1, 3, H, W]) to ``out``; see the module docstring."""
    out = check_export_target(out, height, width)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    shape = (1, frames, 3, height, width)
    example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    other = (1, frames, 3, height + 16, width + 32)
    errors: list[str] = []
    for dynamic in (True, False):
        try:
            dims = None
            if dynamic:
                h = torch.export.Dim("height", min=16, max=8192)
                w = torch.export.Dim("width", min=16, max=8192)
                dims = ({3: h, 4: w},)
            program = torch.export.export(model, (example,), dynamic_shapes=dims)
            torch.export.save(program, out)
            loaded = torch.export.load(out).module()
            err = _check(loaded, model, other if dynamic else shape)
            if err > TOLERANCE:
                raise RuntimeError(f"exported program differs from the model by {err:.3g}")
            return ExportResult(out, "torch.export", dynamic, shape, err)
        except Exception as exc:  # noqa: BLE001 - torch.export raises many kinds
            errors.append(f"torch.export ({'dynamic' if dynamic else 'static'} size): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            log.info("%s", errors[-1])
    message = "torch.export failed (" + "; ".join(errors) + "); fell back to torch.jit.trace"
    log.warning("%s", message)
    with torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)
    torch.jit.save(traced, str(out))
    loaded = torch.jit.load(str(out))
    err = _check(loaded, model, shape)
    err_other = _check(loaded, model, other)
    if max(err, err_other) > TOLERANCE:
        out.unlink(missing_ok=True)
        raise ExportError(f"this network cannot be exported: its traced program differs from the model by "
                         f"{max(err, err_other):.3g} on new inputs (it probably computes part of its forward "
                         f"outside torch, e.g. classical optical flow in numpy). Ship model.pt and run it with "
                         f"nas-restore (nas_restore.build.load_trained) instead")
    return ExportResult(out, "torch.jit.trace", True, shape, max(err, err_other), message)


def export_checkpoint(checkpoint: str | Path, out: str | Path, height: int = 64, width: int = 64) -> ExportResult:
    """Export the ``model.pt`` written by ``nas-restore retrain`` (or its run folder)."""
    check_export_target(out, height, width)  # before the (possibly large) model is loaded
    source = Path(checkpoint) / "model.pt" if Path(checkpoint).is_dir() else Path(checkpoint)
    if Path(out).resolve() == source.resolve():
        raise UserError(f"--out {out} is the model file being exported: give another path (e.g. model.pt2) so "
                        f"model.pt is not overwritten")
    model, genotype = load_trained(checkpoint)
    return export_model(model, input_frames(genotype), out, height, width)


def load_exported(path: str | Path) -> nn.Module:
    """Load an exported file as a callable module: ``torch.export`` (.pt2 zip) or TorchScript."""
    path = Path(path)
    try:
        return torch.export.load(path).module()
    except Exception:  # noqa: BLE001 - not an ExportedProgram: try TorchScript
        return torch.jit.load(str(path))


__all__ = ["ExportError", "ExportResult", "check_export_target", "export_model", "export_checkpoint", "load_exported"]
