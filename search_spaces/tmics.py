"""The TMICS search space for video (and image) deraining.

After Mu et al., "Triple-level Model Inferred Collaborative Network Architecture for Video
Deraining" (IEEE TIP 2022); see ../shared/seeds/RESEARCH.md. The network:

    frames [B,T,3,H,W] -> frame alignment F: OFM (flow + backward warping) or TGM (temporal groups)
                       -> auxiliary rain-streak branch M(K; I): learnable rain kernels -> rain estimate R
    DNA (dominant):  stem(centre, centre - R) + features -> searched "dna" cells -> centre + head
    CNA (companion): features -> searched "cna" cells -> centre + head
    AAS fusion:      out = lambda * DNA + (1 - lambda) * CNA, lambda from a small attention module

The alignment is a macro choice (an NNI ``LayerChoice`` labelled ``alignment``); each branch's cells
share one DARTS-style cell architecture (NNI ``Cell`` with op factories, labels ``dna`` and ``cna``),
so NNI's DARTS builds the paper's per-edge relaxation. :class:`TMICSNet` is the plain ``nn.Module``
a genotype builds to: the same blocks, no NNI.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_restore.genotype import CellGenotype, Edge, Genotype, GenotypeError, cells_from_nni_arch
from nas_restore.ops import build_op, op_names
from search_spaces import SpaceSpec, register_space

ALIGNMENTS = ("ofm", "tgm")
CELL_NAMES = ("dna", "cna")
N_CELL_INPUTS = 2  # DARTS-style cells take the two previous cell outputs

DEFAULT_OPERATIONS = (
    "Residualblocks_3_1", "Residualblocks_5_1", "Denseblocks_3_1", "DilConv_3_2",
    "SPAattention_3", "ECAattention_3", "skip_connect",
)


@dataclass
class TMICSConfig:
    """Size and candidate set of the space. Defaults are sized for a 2-core CPU."""

    channels: int = 16
    frames: int = 3
    cells_per_branch: int = 2
    nodes_per_cell: int = 3
    ops_per_node: int = 2
    operations: list[str] = field(default_factory=lambda: list(DEFAULT_OPERATIONS))
    alignments: list[str] = field(default_factory=lambda: list(ALIGNMENTS))
    fusion_mode: str = "channel"          # AAS lambda per channel ("channel") or per pixel ("pixel")
    rain_kernels: int = 16                # feature channels convolved with the learnable rain kernels
    rain_kernel_size: int = 9

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TMICSConfig":
        from nas_restore.config import from_dict

        config = from_dict(cls, data, "space")
        config.validate()
        return config

    def validate(self) -> None:
        if self.frames < 1 or self.frames % 2 == 0:
            raise ValueError(f"frames must be odd and >= 1 (a window centred on t), got {self.frames}")
        for name in ("channels", "cells_per_branch", "nodes_per_cell", "ops_per_node", "rain_kernels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        known_ops = set(op_names())
        bad = [op for op in self.operations if op not in known_ops or op == "none"]
        if bad or not self.operations:
            raise ValueError(f"operations has unknown or unusable entries {bad}; choose from "
                             f"`nas-restore ops` (none is added by DARTS itself)")
        bad = [a for a in self.alignments if a not in ALIGNMENTS]
        if bad or not self.alignments:
            raise ValueError(f"alignments {bad} unknown; allowed: {', '.join(ALIGNMENTS)}")
        if self.fusion_mode not in ("channel", "pixel"):
            raise ValueError(f"fusion_mode is {self.fusion_mode!r}; allowed: channel, pixel")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def searches_alignment(self) -> bool:
        return self.frames > 1 and len(self.alignments) > 1


PRESETS = {
    "cpu": {},
    "demo": {"channels": 12, "frames": 3, "cells_per_branch": 1, "nodes_per_cell": 2,
             "operations": ["Residualblocks_3_1", "Denseblocks_3_1", "DilConv_3_2", "SPAattention_3",
                            "ECAattention_3", "skip_connect"]},
    "paper": {"channels": 96, "frames": 5, "cells_per_branch": 4, "nodes_per_cell": 4},
}


# --------------------------------------------------------------------------------------------------
# building blocks shared by the space and the plain network


def conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ResidualUnit(nn.Module):
    """conv-PReLU-conv with identity skip: the encoder unit of the alignment modules."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels), nn.PReLU(channels), conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def flow_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warping: output(p) = image(p + flow(p)), bilinear, border padding."""
    b, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=image.dtype),
                            torch.arange(w, device=image.device, dtype=image.dtype), indexing="ij")
    x_new = xs.unsqueeze(0) + flow[:, 0]
    y_new = ys.unsqueeze(0) + flow[:, 1]
    grid = torch.stack((2.0 * x_new / max(w - 1, 1) - 1.0, 2.0 * y_new / max(h - 1, 1) - 1.0), dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


class CompactFlow(nn.Module):
    """A small learnable two-level flow estimator (centre -> neighbour), trained with the network.

    No pretrained flow weights can be downloaded here, so it starts from zero flow (identity warp)
    and learns what alignment helps deraining: coarse flow at 1/2 resolution, then a residual
    refinement at full resolution after a first warp.
    """

    def __init__(self, hidden: int = 24):
        super().__init__()
        self.coarse = nn.Sequential(
            nn.Conv2d(6, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            conv(hidden, hidden), nn.LeakyReLU(0.1), conv(hidden, 2))
        self.refine = nn.Sequential(conv(8, hidden), nn.LeakyReLU(0.1), conv(hidden, 2))
        for head in (self.coarse[-1], self.refine[-1]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, centre: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
        h, w = centre.shape[-2:]
        flow = self.coarse(torch.cat([centre, neighbour], 1))
        flow = 2.0 * F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        warped = flow_warp(neighbour, flow)
        return flow + self.refine(torch.cat([centre, warped, flow], 1))


class OpticalFlowAlignment(nn.Module):
    """OFM: warp every neighbour onto the centre frame, then encode the aligned stack."""

    def __init__(self, frames: int, channels: int):
        super().__init__()
        self.frames = frames
        self.flow = CompactFlow()
        self.encode = nn.Sequential(conv(3 * frames, channels), nn.PReLU(channels), ResidualUnit(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        centre = x[:, c]
        aligned = [centre if t == c else flow_warp(x[:, t], self.flow(centre, x[:, t])) for t in range(x.shape[1])]
        return self.encode(torch.cat(aligned, 1))


def temporal_groups(frames: int) -> list[tuple[int, int, int]]:
    """TGM's groups {t-s, t, t+s} for every stride s; 5 frames -> {t-1,t,t+1}, {t-2,t,t+2}."""
    c = frames // 2
    return [(c - s, c, c + s) for s in range(1, c + 1)] or [(c, c, c)]


class TemporalGroupAlignment(nn.Module):
    """TGM: encode each temporal group of three frames separately, then fuse the groups."""

    def __init__(self, frames: int, channels: int):
        super().__init__()
        self.groups = temporal_groups(frames)
        self.encoders = nn.ModuleList(
            nn.Sequential(conv(9, channels), nn.PReLU(channels), ResidualUnit(channels)) for _ in self.groups)
        self.fuse = nn.Sequential(conv(channels * len(self.groups), channels), nn.PReLU(channels),
                                  ResidualUnit(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [enc(torch.cat([x[:, i] for i in group], 1)) for enc, group in zip(self.encoders, self.groups)]
        return self.fuse(torch.cat(feats, 1))


class SingleFrameEncoder(nn.Module):
    """Image mode (1 frame): no alignment to choose."""

    def __init__(self, frames: int, channels: int):
        super().__init__()
        self.encode = nn.Sequential(conv(3, channels), nn.PReLU(channels), ResidualUnit(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x[:, x.shape[1] // 2])


ALIGNMENT_MODULES = {"ofm": OpticalFlowAlignment, "tgm": TemporalGroupAlignment}


def streak_kernels(out_channels: int, in_channels: int, size: int) -> torch.Tensor:
    """Oriented line kernels (angles spread over +-45 degrees around vertical) to start the rain kernels."""
    kernels = torch.zeros(out_channels, in_channels, size, size)
    centre = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    for i in range(in_channels):
        angle = math.radians(-45 + 90 * i / max(in_channels - 1, 1))
        # distance of each tap from the line through the centre with this angle from vertical
        dist = ((xs - centre) * math.cos(angle) - (ys - centre) * math.sin(angle)).abs()
        line = torch.clamp(1.0 - dist, min=0.0)
        kernels[:, i] = line / line.sum() / in_channels
    return kernels


class RainStreakBranch(nn.Module):
    """M(K; I): features convolved with learnable rain kernels K give a 3-channel rain-layer estimate."""

    def __init__(self, channels: int, kernels: int = 16, size: int = 9):
        super().__init__()
        self.features = nn.Sequential(conv(channels, kernels), nn.PReLU(kernels))
        self.kernels = nn.Parameter(streak_kernels(3, kernels, size))
        self.padding = size // 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.features(features), self.kernels, padding=self.padding)


class AttentionAveraging(nn.Module):
    """AAS: lambda from both branch outputs; out = lambda * dna + (1 - lambda) * cna.

    ``mode="channel"`` gives one lambda per colour channel (global pooling, as TMICS's code),
    ``mode="pixel"`` a lambda map. The last layer starts at zero, so lambda starts at 0.5.
    """

    def __init__(self, mode: str = "channel", hidden: int = 16):
        super().__init__()
        self.mode = mode
        self.features = nn.Sequential(conv(6, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, 3) if mode == "channel" else nn.Conv2d(hidden, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def weight(self, dna: torch.Tensor, cna: torch.Tensor) -> torch.Tensor:
        h = self.features(torch.cat([dna, cna], 1))
        if self.mode == "channel":
            return torch.sigmoid(self.head(h.mean(dim=(2, 3))))[:, :, None, None]
        return torch.sigmoid(self.head(h))

    def forward(self, dna: torch.Tensor, cna: torch.Tensor) -> torch.Tensor:
        lam = self.weight(dna, cna)
        return lam * dna + (1.0 - lam) * cna


class CellOutput(nn.Module):
    """Fuse the concatenated node outputs back to C channels and add the cell input (residual cell)."""

    def __init__(self, channels: int, n_concat: int):
        super().__init__()
        self.fuse = nn.Conv2d(channels * n_concat, channels, 1)

    def forward(self, this_cell: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return inputs[-1] + self.fuse(this_cell)


class DagCell(nn.Module):
    """The plain-torch twin of NNI's frozen ``Cell``: same node numbering, sum per node, concat."""

    def __init__(self, cell: CellGenotype, channels: int):
        super().__init__()
        self.inputs = [[e.input for e in node] for node in cell.nodes]
        self.node_ops = nn.ModuleList(nn.ModuleList(build_op(e.op, channels) for e in node) for node in cell.nodes)
        self.concat = list(cell.concat)
        self.output = CellOutput(channels, len(self.concat))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        states = list(inputs)
        for ops, sources in zip(self.node_ops, self.inputs):
            states.append(sum(op(states[j]) for op, j in zip(ops, sources)))
        return self.output(torch.cat([states[k] for k in self.concat], 1), inputs)


class ChainCell(nn.Module):
    """TMICS's released cell: the operations applied in sequence, plus the cell input."""

    def __init__(self, cell: CellGenotype, channels: int):
        super().__init__()
        self.ops = nn.Sequential(*(build_op(e.op, channels) for node in cell.nodes for e in node))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return inputs[-1] + self.ops(inputs[-1])


class _TMICSBody:
    """The forward pass shared by the NNI space and the plain network."""

    alignment: nn.Module
    rain_branch: RainStreakBranch
    dna_stem: nn.Module
    dna_cells: nn.ModuleList
    cna_cells: nn.ModuleList
    dna_head: nn.Module
    cna_head: nn.Module
    fusion: AttentionAveraging

    def _build_shared(self, config: TMICSConfig) -> None:
        c = config.channels
        self.rain_branch = RainStreakBranch(c, config.rain_kernels, config.rain_kernel_size)
        self.dna_stem = conv(6, c)
        self.dna_head = conv(c, 3)
        self.cna_head = conv(c, 3)
        self.fusion = AttentionAveraging(config.fusion_mode)

    def branches(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate output (rain estimate, DNA, CNA, fused): for losses and inspection."""
        if x.dim() == 4:  # a single image [B,3,H,W]
            x = x.unsqueeze(1)
        centre = x[:, x.shape[1] // 2]
        features = self.alignment(x)
        rain = self.rain_branch(features)
        dna = self._run_cells(self.dna_cells, self.dna_stem(torch.cat([centre, centre - rain], 1)) + features)
        cna = self._run_cells(self.cna_cells, features)
        dna_out = centre + self.dna_head(dna)
        cna_out = centre + self.cna_head(cna)
        return {"rain": rain, "dna": dna_out, "cna": cna_out, "output": self.fusion(dna_out, cna_out)}

    @staticmethod
    def _run_cells(cells: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        prev, cur = x, x
        for cell in cells:
            prev, cur = cur, cell([prev, cur])
        return cur


class TMICSNet(_TMICSBody, nn.Module):
    """The network a TMICS genotype builds to: plain PyTorch, no NNI needed."""

    def __init__(self, genotype: Genotype):
        nn.Module.__init__(self)
        config = TMICSConfig.from_dict(genotype.space_config)
        self.config = config
        alignment = genotype.macro.get("alignment", "none")
        if config.frames == 1:
            self.alignment = SingleFrameEncoder(1, config.channels)
        else:
            self.alignment = ALIGNMENT_MODULES[alignment](config.frames, config.channels)
        self._build_shared(config)
        cell_class = {"dag": DagCell, "chain": ChainCell}
        self.dna_cells = nn.ModuleList(cell_class[genotype.cells["dna"].kind](genotype.cells["dna"], config.channels)
                                       for _ in range(config.cells_per_branch))
        self.cna_cells = nn.ModuleList(cell_class[genotype.cells["cna"].kind](genotype.cells["cna"], config.channels)
                                       for _ in range(config.cells_per_branch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branches(x)["output"]


# --------------------------------------------------------------------------------------------------
# the NNI model space


def _make_space_class():
    from nas_restore.nni_layer import Cell, LayerChoice, ModelSpace

    class TMICSSpace(_TMICSBody, ModelSpace):
        """TMICS as an NNI model space: alignment LayerChoice + shared-label DARTS cells per branch."""

        def __init__(self, **settings: Any):
            super().__init__()
            config = TMICSConfig.from_dict(settings)
            self.config = config
            c = config.channels
            if config.frames == 1:
                self.alignment = SingleFrameEncoder(1, c)
            elif len(config.alignments) == 1:
                self.alignment = ALIGNMENT_MODULES[config.alignments[0]](config.frames, c)
            else:
                self.alignment = LayerChoice({a: ALIGNMENT_MODULES[a](config.frames, c) for a in config.alignments},
                                             label="alignment")
            self._build_shared(config)

            def factories() -> dict[str, Any]:
                return {op: (lambda node_index, op_index, input_index=None, op=op: build_op(op, c))
                        for op in config.operations}

            def cells(label: str) -> nn.ModuleList:
                return nn.ModuleList(
                    Cell(factories(), config.nodes_per_cell, num_ops_per_node=config.ops_per_node,
                         num_predecessors=N_CELL_INPUTS, merge_op="all",
                         postprocessor=CellOutput(c, config.nodes_per_cell), label=label)
                    for _ in range(config.cells_per_branch))

            self.dna_cells = cells("dna")
            self.cna_cells = cells("cna")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.branches(x)["output"]

    return TMICSSpace


_SPACE_CLASS = None


def make_space(config: TMICSConfig):
    """A fresh NNI ``ModelSpace`` (one-shot strategies mutate it in place: never reuse one)."""
    global _SPACE_CLASS
    if _SPACE_CLASS is None:
        _SPACE_CLASS = _make_space_class()
        globals()["TMICSSpace"] = _SPACE_CLASS
    return _SPACE_CLASS(**config.to_dict())


# --------------------------------------------------------------------------------------------------
# genotypes


def to_genotype(arch: dict[str, Any], config: TMICSConfig, metadata: dict[str, Any] | None = None) -> Genotype:
    """NNI architecture dict -> genotype."""
    cells, rest = cells_from_nni_arch(arch, n_inputs=N_CELL_INPUTS)
    macro = {"alignment": _alignment_of(config, rest.pop("alignment", None))}
    if rest:
        raise GenotypeError(f"the architecture has keys the tmics space does not know: {sorted(rest)}")
    genotype = Genotype(space="tmics", cells=cells, macro=macro, space_config=config.to_dict(),
                        fusion={"type": "aas", "mode": config.fusion_mode}, metadata=dict(metadata or {}))
    return validate_genotype(genotype)


def to_nni_arch(genotype: Genotype) -> dict[str, Any]:
    """Genotype -> NNI architecture dict (for ``model_context`` / ``ModelSpace.freeze``)."""
    from nas_restore.genotype import cells_to_nni_arch

    arch = cells_to_nni_arch(genotype.cells)
    config = TMICSConfig.from_dict(genotype.space_config)
    if config.searches_alignment:
        arch["alignment"] = genotype.macro["alignment"]
    return arch


def _alignment_of(config: TMICSConfig, chosen: str | None) -> str:
    if config.frames == 1:
        return "none"
    if chosen is None:
        return config.alignments[0]
    return str(chosen)


def validate_genotype(genotype: Genotype) -> Genotype:
    try:
        config = TMICSConfig.from_dict(genotype.space_config)
    except (TypeError, ValueError) as err:
        raise GenotypeError(f"space_config: {err}") from None
    missing = [c for c in CELL_NAMES if c not in genotype.cells]
    if missing:
        raise GenotypeError(f"cells: the tmics space needs cells {', '.join(CELL_NAMES)}; missing {missing}")
    allowed_macro = {"alignment": ["none"] if config.frames == 1 else list(ALIGNMENTS)}
    ops = [o for o in op_names() if o != "none"]
    genotype.validate(allowed_ops=ops, allowed_macro=allowed_macro)
    for name in CELL_NAMES:
        cell = genotype.cells[name]
        if cell.kind == "dag" and cell.n_inputs != N_CELL_INPUTS:
            raise GenotypeError(f"cells.{name}.n_inputs is {cell.n_inputs}; tmics cells take {N_CELL_INPUTS} inputs")
    return genotype


register_space(SpaceSpec(
    name="tmics",
    description="TMICS video deraining: OFM/TGM alignment, rain-streak branch, DNA+CNA searched cells, AAS fusion",
    config_class=TMICSConfig,
    make_space=make_space,
    make_network=TMICSNet,
    to_genotype=to_genotype,
    validate_genotype=validate_genotype,
    presets=PRESETS,
))
