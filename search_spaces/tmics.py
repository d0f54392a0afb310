"""The TMICS search space for video (and image) deraining.

After Mu et al., "Triple-level Model Inferred Collaborative Network Architecture for Video
Deraining" (IEEE TIP 2022); see ../shared/seeds/RESEARCH.md. The network:

    frames [B,T,3,H,W] -> frame alignment F: OFM (flow + backward warping) or TGM (temporal groups)
                       -> auxiliary rain-streak branch M(K; I): learnable rain kernels -> rain estimate R
    DNA (dominant):  stem(centre, centre - R) + features -> searched "dna" cells -> centre + head
    CNA (companion): features -> searched "cna" cells -> centre + head
    AAS fusion:      out = lambda * DNA + (1 - lambda) * CNA, lambda from a small attention module

The alignment is a macro choice (an NNI ``LayerChoice`` labelled ``alignment``). Each branch's cells
share one cell architecture, of one of two kinds (``TMICSConfig.cell``):

* ``"dag"``: DARTS-style cells (NNI ``Cell`` with op factories, labels ``dna`` and ``cna``), so NNI's
  DARTS builds the paper's per-edge relaxation;
* ``"chain"``: TMICS's released cell, ``nodes_per_cell`` operations in sequence plus the cell input,
  one ``LayerChoice`` per position labelled ``<branch>/chain_<i>`` (shared by the cells of a branch).

OFM's flow (``TMICSConfig.flow``) is either learned with the network (:class:`CompactFlow`, from zero
flow) or classical (:class:`ClassicalFlow`: scikit-image's iterative Lucas-Kanade on grey frames, no
gradient, cached per clip window). :class:`TMICSNet` is the plain ``nn.Module`` a genotype builds to:
the same blocks, no NNI. The released TMICS networks are the reference genotypes ``tmics-heavy`` and
``tmics-light`` (:mod:`search_spaces.reference`).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import networkx as nx
import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_restore.config import SIZE_LIMIT_NOTE, check_ranges, from_dict
from nas_restore.flow import ClassicalFlow, flow_warp
from nas_restore.genotype import CellGenotype, Edge, Genotype, GenotypeError, cells_from_nni_arch, cells_to_nni_arch
from nas_restore.ops import build_op, op_names
from search_spaces import SpaceSpec, register_space

ALIGNMENTS = ("ofm", "tgm")
FLOWS = ("learned", "classical")
CELL_KINDS = ("dag", "chain")
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
    flow: str = "learned"                 # OFM's flow: "learned" (CompactFlow) or "classical" (scikit-image)
    cell: str = "dag"                     # "dag" (DARTS cells) or "chain" (TMICS's released cells, nodes_per_cell ops)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TMICSConfig":
        return from_dict(cls, data, "space")  # runs validate() too

    def validate(self) -> None:
        if self.frames < 1 or self.frames % 2 == 0:
            raise ValueError(f"frames must be odd and >= 1 (a window centred on t), got {self.frames}")
        check_ranges(self, {"frames": (1, 15), "channels": (1, 512), "cells_per_branch": (1, 16),
                            "nodes_per_cell": (1, 12), "ops_per_node": (1, 8), "rain_kernels": (1, 512),
                            "rain_kernel_size": (1, 31)}, SIZE_LIMIT_NOTE)
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
        if self.flow not in FLOWS:
            raise ValueError(f"flow is {self.flow!r}; allowed: {', '.join(FLOWS)}")
        if self.cell not in CELL_KINDS:
            raise ValueError(f"cell is {self.cell!r}; allowed: {', '.join(CELL_KINDS)}")

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
    """OFM: warp every neighbour onto the centre frame (learned or classical flow), then encode the stack."""

    def __init__(self, frames: int, channels: int, flow: str = "learned"):
        super().__init__()
        if flow not in FLOWS:
            raise ValueError(f"flow is {flow!r}; allowed: {', '.join(FLOWS)}")
        self.frames = frames
        self.flow = CompactFlow() if flow == "learned" else ClassicalFlow()
        self.encode = nn.Sequential(conv(3 * frames, channels), nn.PReLU(channels), ResidualUnit(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        centre = x[:, c]
        if isinstance(self.flow, ClassicalFlow):
            flows = self.flow(x)
            aligned = [centre if t == c else flow_warp(x[:, t], flows[:, t]) for t in range(x.shape[1])]
        else:
            aligned = [centre if t == c else flow_warp(x[:, t], self.flow(centre, x[:, t]))
                       for t in range(x.shape[1])]
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


def make_alignment(name: str, config: "TMICSConfig") -> nn.Module:
    """The alignment module ``name`` (ofm, tgm) for a config; image mode (1 frame) has none to choose."""
    if config.frames == 1:
        return SingleFrameEncoder(1, config.channels)
    if name == "ofm":
        return OpticalFlowAlignment(config.frames, config.channels, flow=config.flow)
    return ALIGNMENT_MODULES[name](config.frames, config.channels)


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
    """TMICS's released cell: the operations applied in sequence, plus the cell input.

    Built from a genotype (plain network) or from a sequence of modules (the NNI space's chain of
    ``LayerChoice``), so both have the same parameter names.
    """

    def __init__(self, cell: CellGenotype | None, channels: int, ops: Sequence[nn.Module] | None = None):
        super().__init__()
        if ops is None:
            if cell is None:
                raise ValueError("ChainCell needs a chain genotype or the op modules")
            ops = [build_op(e.op, channels) for node in cell.nodes for e in node]
        self.ops = nn.Sequential(*ops)

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
        self.alignment = make_alignment(genotype.macro.get("alignment", "none"), config)
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


@functools.cache
def _make_space_class():
    """Defined on first use, so that building a genotype's plain network never imports NNI."""
    from nas_restore.nni_layer import Cell, LayerChoice, ModelSpace, label_scope

    class TMICSSpace(_TMICSBody, ModelSpace):
        """TMICS as an NNI model space: alignment LayerChoice + shared-label DARTS cells per branch."""

        def __init__(self, **settings: Any):
            super().__init__()
            config = TMICSConfig.from_dict(settings)
            self.config = config
            c = config.channels
            if config.searches_alignment:
                self.alignment = LayerChoice({a: make_alignment(a, config) for a in config.alignments},
                                             label="alignment")
            else:
                self.alignment = make_alignment(config.alignments[0], config)
            self._build_shared(config)

            def factories() -> dict[str, Any]:
                return {op: (lambda node_index, op_index, input_index=None, op=op: build_op(op, c))
                        for op in config.operations}

            def chain(label: str) -> ChainCell:
                # labels <branch>/chain_<i>, the same in every cell of the branch: one shared choice each
                with label_scope(label):
                    return ChainCell(None, c, ops=[
                        LayerChoice({op: build_op(op, c) for op in config.operations}, label=f"chain_{i}")
                        for i in range(config.nodes_per_cell)])

            def cells(label: str) -> nn.ModuleList:
                if config.cell == "chain":
                    return nn.ModuleList(chain(label) for _ in range(config.cells_per_branch))
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


def make_space(config: TMICSConfig):
    """A fresh NNI ``ModelSpace`` (one-shot strategies mutate it in place: never reuse one)."""
    return _make_space_class()(**config.to_dict())


# --------------------------------------------------------------------------------------------------
# genotypes


_CHAIN_KEY = re.compile(r"^(?P<cell>[^/]+)/chain_(?P<pos>\d+)$")


def to_genotype(arch: dict[str, Any], config: TMICSConfig, metadata: dict[str, Any] | None = None) -> Genotype:
    """NNI architecture dict -> genotype (dag cells from ``<cell>/op_*``, chain cells from ``<cell>/chain_<i>``)."""
    cells, rest = cells_from_nni_arch(arch, n_inputs=N_CELL_INPUTS)
    chains: dict[str, dict[int, str]] = {}
    for key in [k for k in rest if _CHAIN_KEY.match(k)]:
        m = _CHAIN_KEY.match(key)
        chains.setdefault(m["cell"], {})[int(m["pos"])] = str(rest.pop(key))
    for name, ops in chains.items():
        if sorted(ops) != list(range(len(ops))):
            raise GenotypeError(f"cell {name!r}: chain positions {sorted(ops)} do not run 0..{len(ops) - 1}")
        if name in cells:
            raise GenotypeError(f"cell {name!r} has both DARTS-cell and chain keys in the architecture")
        cells[name] = chain_cell([ops[i] for i in range(len(ops))])
    macro = {"alignment": _alignment_of(config, rest.pop("alignment", None))}
    if rest:
        raise GenotypeError(f"the architecture has keys the tmics space does not know: {sorted(rest)}")
    genotype = Genotype(space="tmics", cells=cells, macro=macro, space_config=config.to_dict(),
                        fusion={"type": "aas", "mode": config.fusion_mode}, metadata=dict(metadata or {}))
    return validate_genotype(genotype)


def chain_cell(ops: Sequence[str]) -> CellGenotype:
    """A chain cell genotype: the ops in order, one input (the previous cell); edge inputs are unused."""
    return CellGenotype(nodes=[[Edge(op, 0) for op in ops]], concat=[], kind="chain", n_inputs=1)


def to_nni_arch(genotype: Genotype) -> dict[str, Any]:
    """Genotype -> NNI architecture dict (for ``model_context`` / ``ModelSpace.freeze``)."""
    dags = {name: cell for name, cell in genotype.cells.items() if cell.kind == "dag"}
    arch = cells_to_nni_arch(dags)
    for name, cell in genotype.cells.items():
        if cell.kind == "chain":
            arch.update({f"{name}/chain_{i}": op for i, op in enumerate(cell.ops)})
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
        if cell.kind != config.cell:
            raise GenotypeError(f"cells.{name}.kind is {cell.kind!r} but space_config.cell is {config.cell!r}: "
                                f"set space_config.cell to {cell.kind!r} (a tmics genotype has one kind of cell)")
        if cell.kind == "dag" and cell.n_inputs != N_CELL_INPUTS:
            raise GenotypeError(f"cells.{name}.n_inputs is {cell.n_inputs}; tmics cells take {N_CELL_INPUTS} inputs")
        if cell.kind == "chain":
            if cell.n_inputs != 1 or len(cell.nodes) != 1:
                raise GenotypeError(f"cells.{name}: a chain cell has n_inputs 1 and one node list holding its ops "
                                    f"in order; got n_inputs {cell.n_inputs} and {len(cell.nodes)} node lists")
            if len(cell.ops) != config.nodes_per_cell:
                raise GenotypeError(f"cells.{name} chains {len(cell.ops)} ops but space_config.nodes_per_cell is "
                                    f"{config.nodes_per_cell}: they must agree")
    return genotype


# --------------------------------------------------------------------------------------------------
# the drawing of the macro network (nas-restore render), beside the space it draws

_ALIGNMENT_LABELS = {"ofm": "OFM alignment\n(optical flow)", "tgm": "TGM alignment\n(temporal grouping)",
                     "none": "no alignment\n(single frame)"}


def tmics_macro_graph(genotype: Genotype) -> nx.DiGraph:
    """TMICS: frames -> alignment (OFM/TGM) -> rain streaks -> DNA cells | CNA cells -> AAS -> output.

    Nodes carry ``kind`` (input, module, cell, fusion, output) and ``label``; edges carry ``label``
    (and ``kind="guide"`` for the rain estimate that guides DNA).
    """
    config = genotype.space_config or {}
    k = int(config.get("cells_per_branch", 4))
    if k < 1:
        raise ValueError(f"space_config.cells_per_branch is {k}: a TMICS branch needs at least one cell")
    frames = config.get("frames", config.get("num_frames"))
    alignment = str(genotype.macro.get("alignment", ""))
    fusion = genotype.fusion or {}
    fusion_type = str(fusion.get("type", "aas"))
    fusion_label = ("AAS\nλ·DNA + (1−λ)·CNA" if fusion_type.lower() == "aas"
                    else f"{fusion_type} fusion")
    if fusion.get("mode"):
        fusion_label += f"\n({fusion['mode']} λ)"

    graph = nx.DiGraph()
    graph.add_node("frames", kind="input", label=f"{frames} input frames" if frames else "input frames")
    graph.add_node("alignment", kind="module",
                   label=_ALIGNMENT_LABELS.get(alignment.lower(), f"{alignment.upper()} alignment".strip()))
    graph.add_node("rain_streak", kind="module", label="rain streaks\nM(K)")
    for branch in ("dna", "cna"):
        for i in range(1, k + 1):
            graph.add_node(f"{branch}_{i}", kind="cell", label=f"{branch.upper()} {i}", cell=branch)
    graph.add_node("aas", kind="fusion", label=fusion_label)
    graph.add_node("output", kind="output", label="derained\ncentre frame")

    graph.add_edge("frames", "alignment", label="")
    graph.add_edge("alignment", "rain_streak", label="")
    graph.add_edge("rain_streak", "dna_1", label="guides", kind="guide")
    for branch in ("dna", "cna"):
        graph.add_edge("alignment", f"{branch}_1", label="features")
        for i in range(1, k):
            graph.add_edge(f"{branch}_{i}", f"{branch}_{i + 1}", label="")
    graph.add_edge(f"dna_{k}", "aas", label="λ")
    graph.add_edge(f"cna_{k}", "aas", label="1−λ")
    graph.add_edge("aas", "output", label="")
    return graph


register_space(SpaceSpec(
    name="tmics",
    description="TMICS video deraining: OFM/TGM alignment, rain-streak branch, DNA+CNA searched cells, AAS fusion",
    config_class=TMICSConfig,
    make_space=make_space,
    make_network=TMICSNet,
    to_genotype=to_genotype,
    validate_genotype=validate_genotype,
    presets=PRESETS,
    to_nni_arch=to_nni_arch,
    macro_graph=tmics_macro_graph,
))
