"""The progressive space: progressive recursive image derainers, PRN_r and PReNet_r among its members.

After Ren, Zuo, Hu, Zhu and Meng, "Progressive Image Deraining Networks: A Better and Simpler Baseline"
(CVPR 2019; ``search_spaces/prn.py`` is the fixed PRN_r). What makes PRN_r strong at 21 k parameters is
weight reuse: one stage's weights applied ``stages`` times, and inside each stage one block applied
``recursions`` times. This space makes that axis, and the block itself, architecture choices, so that a
search can find such designs. With ``y`` the rainy image (the centre frame) and ``x_0 = y``, every stage is

    f_in:       concat(y, x_{t-1}) (6 channels) -> conv 3x3 to C -> ReLU
    recurrent:  ``none``, or PReNet's ConvLSTM (state (h, c) carried from stage to stage, zero at the start)
    unit:       ``unit_ops`` searched operations in sequence, the whole unit applied ``recursions`` times
                with the SAME weights (each registered op carries its own residual; ``skip_connect``
                shortens the unit)
    f_out:      conv 3x3 from C to 3;  x_t = y + f_out(...)

and the output is ``x_T``. Every stage is the same module: the network holds one stage's parameters, so
``stages`` and ``recursions`` change the compute (MACs), never the parameter count.

Architecture choices (NNI labels; the genotype's macro keys and its one cell):

* ``stages``: the number of weight-shared stages (default candidates ``{2, 3, 4}`` at the cpu preset,
  ``{2, 3, 4, 6}`` at demo and paper);
* ``recursions``: applications of the unit per stage (``{1, 2, 3}``; ``{1, 2, 3, 5}``);
* ``recurrent``: ``none`` or ``convlstm`` (a LayerChoice);
* ``unit/chain_<i>``: the op at position ``i`` of the unit, a LayerChoice over ``operations`` (registered
  ops: PRN_r's plain residual block, residual 3x3/5x5, dilated, separable, ECA and spatial attention, skip).

Both depths are NNI ``Repeat`` modules with a depth choice, so every strategy family searches them:
DARTS/GDAS/PC-DARTS relax each into a softmax-weighted sum of the outputs after each candidate depth
(NNI's ``DifferentiableMixedRepeat``: one forward of the deepest serves all, and the depth weights get
gradients), SPOS samples a depth per step (``PathSamplingRepeat``), and multi-trial strategies see
plain categoricals. The stage Repeat carries the tuple ``(rainy, estimate, memory)``; the mixed sum
leaves ``rainy`` unchanged (the weights sum to 1). The recurrent choice reads and writes one tensor
(features and memory packed along the channels), as every strategy's mixed layer expects.

The genotype stores the unit as a one-input DAG cell whose node ``i`` reads node ``i - 1`` and whose
output is the last node: exactly a chain without an outer residual (a ``chain`` cell would mean
"input + chain"). Width (``channels``) is a fixed setting of the space: presets cpu 16, demo 24, paper 32.

Members: ``unit = [PlainResblock_3, skip_connect]``, 6 stages, 5 recursions is PRN_r (21,123 weights at
the paper width, the same network as :class:`search_spaces.prn.PRN`, weight for weight); with
``recurrent = convlstm`` it is PReNet_r (94,979 weights; the paper lists 94.98k). :func:`prn_genotype`
gives both; the reference names are ``progressive-prn`` and ``progressive-prenet-r``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import networkx as nx
import torch
import torch.nn as nn

from nas_restore.config import SIZE_LIMIT_NOTE, check_ranges, from_dict
from nas_restore.genotype import CellGenotype, Edge, Genotype, GenotypeError
from nas_restore.ops import build_op, op_names
from search_spaces import SpaceSpec, find_space, register_space

SPACE = "progressive"
UNIT = "unit"                       # the cell's name in the genotype and the NNI label scope of its ops
RECURRENT = ("none", "convlstm")
MAX_DEPTH = 32                      # most stages or recursions a config may list (a bound, not a suggestion)
DEFAULT_OPERATIONS = (
    "PlainResblock_3", "Residualblocks_3_1", "Residualblocks_5_1", "DilConv_3_2", "SepConv_3",
    "ECAattention_3", "SPAattention_3", "skip_connect",
)
PRN_UNIT = ("PlainResblock_3", "skip_connect")   # PRN_r's recursive block, the second position unused
PRN_STAGES, PRN_RECURSIONS = 6, 5


@dataclass
class ProgressiveConfig:
    """The width and the candidate sets of the space. Defaults are the cpu preset (a 2-core CPU)."""

    channels: int = 16
    frames: int = 1                     # the input window (odd); only its centre frame is derained
    unit_ops: int = 2                   # operations in the recursive unit
    operations: list[str] = field(default_factory=lambda: list(DEFAULT_OPERATIONS))
    stages: list[int] = field(default_factory=lambda: [2, 3, 4])
    recursions: list[int] = field(default_factory=lambda: [1, 2, 3])
    recurrent: list[str] = field(default_factory=lambda: list(RECURRENT))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProgressiveConfig":
        return from_dict(cls, data, "space")  # runs validate() too

    def validate(self) -> None:
        if self.frames < 1 or self.frames % 2 == 0:
            raise ValueError(f"frames must be odd and >= 1 (a window centred on t; progressive derains its centre "
                             f"frame), got {self.frames}")
        check_ranges(self, {"frames": (1, 15), "channels": (1, 512), "unit_ops": (1, 8)}, SIZE_LIMIT_NOTE)
        for name, values in (("stages", self.stages), ("recursions", self.recursions)):
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DEPTH
                                     for v in values):
                raise ValueError(f"{name} must be a non-empty list of integers in 1..{MAX_DEPTH}, got {values}"
                                 + (SIZE_LIMIT_NOTE if any(isinstance(v, int) and v > MAX_DEPTH for v in values)
                                    else ""))
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {values}")
        known = set(op_names()) - {"none"}
        bad = [op for op in self.operations if op not in known]
        if bad or not self.operations or len(set(self.operations)) != len(self.operations):
            raise ValueError(f"operations has unknown, repeated or no entries ({bad or self.operations}); choose "
                             "registered ops from `nas-restore ops` (not none: a unit that outputs zeros is no "
                             "derainer)")
        bad = [r for r in self.recurrent if r not in RECURRENT]
        if bad or not self.recurrent or len(set(self.recurrent)) != len(self.recurrent):
            raise ValueError(f"recurrent {self.recurrent} has unknown, repeated or no entries; allowed: "
                             f"{', '.join(RECURRENT)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def macro_choices(self) -> dict[str, list[str]]:
        """Every macro key with its allowed values (as strings, as the genotype holds them)."""
        return {"stages": [str(v) for v in self.stages], "recursions": [str(v) for v in self.recursions],
                "recurrent": list(self.recurrent)}

    def searched_labels(self) -> dict[str, list[Any]]:
        """The labels the NNI space really has (choices with more than one candidate), with NNI's values."""
        labels: dict[str, list[Any]] = {"stages": sorted(self.stages), "recursions": sorted(self.recursions),
                                        "recurrent": list(self.recurrent)}
        labels.update({chain_label(i): list(self.operations) for i in range(self.unit_ops)})
        return {k: v for k, v in labels.items() if len(v) > 1}


_DEPTHS = {"stages": [2, 3, 4, 6], "recursions": [1, 2, 3, 5]}
PRESETS = {
    "cpu": {},                                                # 16 channels, 2-4 stages, 1-3 recursions
    "demo": {"channels": 24, **_DEPTHS},
    "paper": {"channels": 32, **_DEPTHS},                     # PRN_r's width; PRN_r and PReNet_r are members
}


def chain_label(position: int) -> str:
    return f"{UNIT}/chain_{position}"


# --------------------------------------------------------------------------------------------------
# building blocks shared by the space and the plain network


class NoRecurrence(nn.Module):
    """No recurrent layer: passes its input through (features alone, or features packed with the memory)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvLSTM(nn.Module):
    """PReNet's recurrent layer: LSTM gates from conv 3x3 over ``[x, h]``.

    Reads and writes one tensor, ``[x, h, c]`` packed along the channels (3C), so that the recurrent
    choice is a LayerChoice from a tensor to a tensor like every other (GDAS's straight-through edge and
    PC-DARTS's mixed layers take tensors); it returns ``[h', h', c']``: the features are the new ``h``.
    One conv to 4C holds exactly the parameters of PReNet's four 2C -> C gate convs (i, f, g, o).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.gates = nn.Conv2d(2 * channels, 4 * channels, 3, padding=1)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        c_prev = packed[:, 2 * self.channels:]
        i, f, g, o = self.gates(packed[:, :2 * self.channels]).chunk(4, 1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return torch.cat([h, h, c], 1)


def make_recurrent(name: str, channels: int) -> nn.Module:
    if name == "convlstm":
        return ConvLSTM(channels)
    if name == "none":
        return NoRecurrence()
    raise ValueError(f"recurrent {name!r} unknown; allowed: {', '.join(RECURRENT)}")


class Unit(nn.Module):
    """The searched recursive unit: its operations in sequence (each maps C -> C with its own residual)."""

    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.ops = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)


class _Shared(nn.Module):
    """A pass that re-applies a module registered elsewhere (held unregistered: its weights belong to the
    network once, and every pass shares them)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._shared = [module]

    def forward(self, state: Any) -> Any:
        return self._shared[0](state)


class Stage(nn.Module):
    """One progressive stage, ``(rainy, estimate, memory) -> (rainy, rainy + f_out(...), memory)``.

    ``repeat(passes)`` wraps the ``max_recursions`` passes of the unit: ``nn.Sequential`` in the plain
    network, NNI's ``Repeat`` with the ``recursions`` choice in the space.
    """

    def __init__(self, channels: int, recurrent: nn.Module, unit: nn.Module, max_recursions: int,
                 repeat: Callable[[list[nn.Module]], nn.Module]):
        super().__init__()
        self.f_in = nn.Sequential(nn.Conv2d(6, channels, 3, padding=1), nn.ReLU())
        self.recurrent = recurrent
        self.unit = unit
        self.recursion = repeat([_Shared(unit) for _ in range(max_recursions)])
        self.f_out = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, state: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        rainy, estimate, memory = state  # memory: [h, c] (2C channels) with a recurrent layer, else ()
        h = self.f_in(torch.cat([rainy, estimate], 1))
        if isinstance(memory, torch.Tensor):
            packed = self.recurrent(torch.cat([h, memory], 1))
            c = h.shape[1]
            h, memory = packed[:, :c], packed[:, c:]
        h = self.recursion(h)
        return rainy, rainy + self.f_out(h), memory


class _ProgressiveBody:
    """The forward pass shared by the NNI space and the plain network."""

    frames: int
    channels: int
    stage: Stage
    stages: nn.Module       # the passes of the one stage: nn.Sequential, or NNI's Repeat in the space

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(1)
        if x.shape[1] != self.frames:
            raise ValueError(f"progressive was built for {self.frames} frame(s), got a clip of {x.shape[1]}")
        rainy = x[:, x.shape[1] // 2]
        memory: Any = ()
        if not isinstance(self.stage.recurrent, NoRecurrence):  # ConvLSTM, or a choice that may be one
            memory = rainy.new_zeros(rainy.shape[0], 2 * self.channels, *rainy.shape[-2:])  # h = c = 0
        _, estimate, _ = self.stages((rainy, rainy, memory))
        return estimate


class ProgressiveNet(_ProgressiveBody, nn.Module):
    """The network a progressive genotype builds to: plain PyTorch, no NNI needed."""

    def __init__(self, genotype: Genotype):
        nn.Module.__init__(self)
        validate_genotype(genotype)
        config = ProgressiveConfig.from_dict(genotype.space_config)
        self.config = config
        self.frames, self.channels = config.frames, config.channels
        unit = Unit([build_op(op, config.channels) for op in unit_ops(genotype)])
        recurrent = make_recurrent(genotype.macro["recurrent"], config.channels)
        self.stage = Stage(config.channels, recurrent, unit, int(genotype.macro["recursions"]),
                           lambda passes: nn.Sequential(*passes))
        self.stages = nn.Sequential(*(_Shared(self.stage) for _ in range(int(genotype.macro["stages"]))))


# --------------------------------------------------------------------------------------------------
# the NNI model space


@functools.cache
def _make_space_class():
    """Defined on first use, so that building a genotype's plain network never imports NNI."""
    from nas_restore.nni_layer import LayerChoice, ModelSpace, frozen_model, label_scope, nni

    Repeat = nni.nas.nn.pytorch.Repeat  # a depth choice: DARTS mixes the depths, SPOS samples one

    def choice(candidates: dict[str, nn.Module], label: str) -> nn.Module:
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        return LayerChoice(candidates, label=label)

    def repeat(blocks: list[nn.Module], label: str, depths: list[int]) -> nn.Module:
        depth: Any = depths[0] if len(depths) == 1 else nni.choice(label, sorted(depths))
        return Repeat(blocks, depth)

    class ProgressiveSpace(_ProgressiveBody, ModelSpace):
        """The progressive space as an NNI model space: stages and recursions (Repeat), the recurrent
        layer and the unit's ops (LayerChoice)."""

        def __init__(self, **settings: Any):
            super().__init__()
            config = ProgressiveConfig.from_dict(settings)
            self.config = config
            self.frames, self.channels = config.frames, config.channels
            c = config.channels
            recurrent = choice({r: make_recurrent(r, c) for r in config.recurrent}, "recurrent")
            with label_scope(UNIT):
                unit = Unit([choice({op: build_op(op, c) for op in config.operations}, f"chain_{i}")
                             for i in range(config.unit_ops)])
            self.stage = Stage(c, recurrent, unit, max(config.recursions),
                               lambda passes: repeat(passes, "recursions", config.recursions))
            self.stages = repeat([_Shared(self.stage) for _ in range(max(config.stages))], "stages", config.stages)

        def freeze(self, sample: dict[str, Any]) -> nn.Module:
            """The network of ``sample``, rebuilt in NNI's frozen context (NNI's own recipe).

            NNI's default freeze deep-copies module by module and would leave the passes pointing at the
            unfrozen stage they share; rebuilding keeps them on the one frozen stage. Weights are fresh
            (NNI promises none across a freeze; one-shot strategies keep theirs in the supernet).
            """
            return frozen_model(type(self), dict(sample), self.config.to_dict())

    return ProgressiveSpace


def make_space(config: ProgressiveConfig):
    """A fresh NNI ``ModelSpace`` (one-shot strategies mutate it in place: never reuse one)."""
    return _make_space_class()(**config.to_dict())


# --------------------------------------------------------------------------------------------------
# genotypes


def unit_cell(ops: Sequence[str]) -> CellGenotype:
    """The unit as a genotype cell: one input, node ``i`` reads node ``i - 1`` (number ``i``), output the last."""
    return CellGenotype(nodes=[[Edge(op, i)] for i, op in enumerate(ops)], concat=[len(ops)], kind="dag",
                        n_inputs=1)


def unit_ops(genotype: Genotype) -> list[str]:
    """The unit's operations in order."""
    return [edge.op for node in genotype.cells[UNIT].nodes for edge in node]


def to_genotype(arch: dict[str, Any], config: ProgressiveConfig, metadata: dict[str, Any] | None = None) -> Genotype:
    """NNI architecture dict -> genotype (stages, recursions, recurrent in ``macro``; the unit as a cell)."""
    labels = config.searched_labels()
    unknown = sorted(set(arch) - set(labels))
    if unknown:
        raise GenotypeError(f"the architecture has keys the progressive space does not know: {unknown}; its "
                            f"choices: {', '.join(labels) or 'none'}")
    missing = sorted(set(labels) - set(arch))
    if missing:
        raise GenotypeError(f"the architecture answers no value for the progressive choice(s) {missing}: give every "
                            "searched label (single-candidate choices may be left out)")
    fixed = {"stages": config.stages[0], "recursions": config.recursions[0], "recurrent": config.recurrent[0]}
    macro = {key: str(arch.get(key, fixed[key])) for key in fixed}
    ops = [str(arch.get(chain_label(i), config.operations[0])) for i in range(config.unit_ops)]
    genotype = Genotype(space=SPACE, cells={UNIT: unit_cell(ops)}, macro=macro, space_config=config.to_dict(),
                        metadata=dict(metadata or {}))
    return validate_genotype(genotype)


def to_nni_arch(genotype: Genotype) -> dict[str, Any]:
    """Genotype -> NNI architecture dict (the depths back to integers, as NNI's Repeat wants them)."""
    config = ProgressiveConfig.from_dict(genotype.space_config)
    ops = unit_ops(genotype)
    values: dict[str, Any] = {"stages": int(genotype.macro["stages"]), "recursions": int(genotype.macro["recursions"]),
                              "recurrent": genotype.macro["recurrent"]}
    values.update({chain_label(i): op for i, op in enumerate(ops)})
    return {label: values[label] for label in config.searched_labels()}


def validate_genotype(genotype: Genotype) -> Genotype:
    """The genotype against its space config: the unit's shape and ops, the macro choices' values."""
    try:
        config = ProgressiveConfig.from_dict(genotype.space_config)
    except (TypeError, ValueError) as err:
        raise GenotypeError(f"space_config: {err}") from None
    if set(genotype.cells) != {UNIT}:
        raise GenotypeError(f"cells: a progressive genotype has exactly one cell, {UNIT!r} (the recursive unit); "
                            f"got {sorted(genotype.cells) or 'none'}")
    cell = genotype.cells[UNIT]
    n = config.unit_ops
    chain = (cell.kind == "dag" and cell.n_inputs == 1 and len(cell.nodes) == n and cell.concat == [n]
             and all(len(node) == 1 and node[0].input == i for i, node in enumerate(cell.nodes)))
    if not chain:
        raise GenotypeError(f"cells.{UNIT} must be the unit's {n} op(s) in sequence (space_config.unit_ops): a dag "
                            f"cell with n_inputs 1, node i holding one edge from input i, concat [{n}]; build it "
                            "with search_spaces.progressive.unit_cell(ops)")
    unknown = sorted(set(genotype.macro) - {"stages", "recursions", "recurrent"})
    if unknown:
        raise GenotypeError(f"macro has keys {unknown} that the progressive space does not have; its keys: stages, "
                            "recursions, recurrent")
    genotype.validate(allowed_ops=config.operations, allowed_macro=config.macro_choices())
    return genotype


def prn_genotype(preset: str | None = "paper", recurrent: bool = False, **overrides: Any) -> Genotype:
    """PRN_r inside this space (``recurrent=True``: PReNet_r): unit [PlainResblock_3, skip], 6 stages, 5 recursions.

    The preset's candidate sets must hold 6 stages and 5 recursions (demo and paper do, cpu does not).
    """
    spec = find_space(SPACE)
    config = spec.config(preset, **overrides)
    name = "progressive-prenet-r" if recurrent else "progressive-prn"
    for key, value in (("stages", PRN_STAGES), ("recursions", PRN_RECURSIONS)):
        if value not in getattr(config, key):
            raise GenotypeError(f"{name} needs {value} {key}, but the progressive space at preset {preset!r} allows "
                                f"{getattr(config, key)}: use the demo or paper preset, or add {value} to {key}")
    if "PlainResblock_3" not in config.operations or "skip_connect" not in config.operations or config.unit_ops < 1:
        raise GenotypeError(f"{name} needs the ops PlainResblock_3 and skip_connect among space.operations")
    ops = [PRN_UNIT[0]] + [PRN_UNIT[1]] * (config.unit_ops - 1)
    genotype = Genotype(
        space=SPACE, cells={UNIT: unit_cell(ops)},
        macro={"stages": str(PRN_STAGES), "recursions": str(PRN_RECURSIONS),
               "recurrent": "convlstm" if recurrent else "none"},
        space_config=config.to_dict(),
        metadata={"name": name, "preset": preset,
                  "strategy": "hand-designed member of the progressive space: "
                              + ("PReNet_r" if recurrent else "PRN_r") + ", Ren et al. CVPR 2019"})
    return validate_genotype(genotype)


# --------------------------------------------------------------------------------------------------
# the drawing of the macro network (nas-restore render)


def progressive_macro_graph(genotype: Genotype) -> nx.DiGraph:
    """rainy -> f_in -> [ConvLSTM] -> unit (x recursions) -> f_out (+ rainy) -> output, stages times.

    Acyclic on purpose (the analysis takes longest paths): the repetitions are written on the nodes and
    edges, and the unit is drawn once, as the network holds it once.
    """
    macro = genotype.macro
    stages, recursions = macro.get("stages", "?"), macro.get("recursions", "?")
    frames = (genotype.space_config or {}).get("frames", 1)
    graph = nx.DiGraph()
    graph.add_node("rainy", kind="input",
                   label="rainy image" if frames == 1 else f"{frames} input frames\n(centre frame derained)")
    graph.add_node("f_in", kind="module", label="f_in\nconv 3x3 on (rainy, estimate), ReLU")
    chain = ["f_in"]
    if macro.get("recurrent") == "convlstm":
        graph.add_node("convlstm", kind="module", label="ConvLSTM\n(state carried between stages)")
        chain.append("convlstm")
    graph.add_node(UNIT, kind="cell", cell=UNIT, label=f"unit x {recursions}\n(one set of weights)")
    graph.add_node("f_out", kind="module", label="f_out\nconv 3x3 to RGB, + rainy")
    graph.add_node("output", kind="output", label=f"derained image\n(estimate after {stages} stages)")
    chain += [UNIT, "f_out"]
    graph.add_edge("rainy", "f_in", label="")
    for u, v in zip(chain, chain[1:]):
        graph.add_edge(u, v, label=f"x {recursions}" if v == UNIT else "")
    graph.add_edge("rainy", "f_out", label="+ rainy")
    graph.add_edge("f_out", "output", label=f"{stages} weight-shared stages")
    return graph


register_space(SpaceSpec(
    name=SPACE,
    description="progressive recursive image deraining (PRN_r / PReNet_r family): searched weight-shared "
                "stages, recursions per stage, ConvLSTM on/off and the recursive unit's ops",
    config_class=ProgressiveConfig,
    make_space=make_space,
    make_network=ProgressiveNet,
    to_genotype=to_genotype,
    validate_genotype=validate_genotype,
    presets=PRESETS,
    to_nni_arch=to_nni_arch,
    macro_graph=progressive_macro_graph,
))
