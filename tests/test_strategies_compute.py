"""The compute-saving one-shot strategies compute what they claim: pcdarts (partial channels + edge
normalisation), gdas with hard=True (one candidate per edge), spos (one path per step + evolution)."""

import logging

import pytest
import pandas as pd
import torch
from torch import nn

from nas_restore.datasets import DataConfig
from nas_restore.search import SearchConfig, run_search
from search_spaces import find_space
from strategies import find_strategy

OPS4 = ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3", "skip_connect"]
TINY = {"channels": 8, "frames": 3, "cells_per_branch": 1, "nodes_per_cell": 2, "operations": OPS4}
RRG = {"channels": 4, "frames": 3, "strides": [1], "depths": [1, 2], "expansions": [1, 2],
       "operations": ["DilConv_3_2", "ECAattention_3"]}
SPACES = {"dag": ("tmics", {**TINY, "cell": "dag"}), "chain": ("tmics", {**TINY, "cell": "chain"}),
          "rrgnet": ("rrgnet", RRG)}


def supernet(kind: str, strategy: str, **options):
    space_name, settings = SPACES[kind]
    spec = find_space(space_name)
    torch.manual_seed(0)
    space = spec.make_space(spec.config("demo", **settings))
    built = find_strategy(strategy).build(options)
    return built.mutate_model(space), built


def tiny_search(strategy: str, tmp_path, space: str = "dag", epochs: int = 2, **options):
    space_name, settings = SPACES[space]
    config = SearchConfig(space=space_name, preset="demo", space_settings=settings, epochs=epochs, batch_size=2,
                          strategy=strategy, strategy_options=options, device="cpu", progress=False,
                          data=DataConfig(patch_size=16, train_items=4, val_items=4))
    return run_search(config, tmp_path)


def capture(monkeypatch, name: str) -> list:
    spec = find_strategy(name)
    built, make = [], spec.make
    monkeypatch.setattr(spec, "make", lambda **o: built.append(make(**o)) or built[-1])
    return built


def resample(net) -> dict:
    memo = {}
    for m in net.modules():
        if m is not net and hasattr(m, "resample") and hasattr(m, "export"):
            memo.update(m.resample(memo))
    return memo


def edges(net):
    """(edge name, {op name: module}) for every mixed edge of a supernet (cell edges, op LayerChoices)."""
    from nni.nas.nn.pytorch import LayerChoice
    from nni.nas.oneshot.pytorch.supermodule.sampling import PathSamplingCell

    for name, m in net.named_modules():
        if isinstance(m, PathSamplingCell):
            for i, node in enumerate(m.ops):
                for j, ops in enumerate(node):
                    yield f"{name}:{i}_{j}", dict(ops.items())
        elif isinstance(m, LayerChoice) and all(n in OPS4 for n in m.names):
            yield name, {n: m[n] for n in m.names}


def count_calls(net, x, *, channels: dict | None = None) -> dict[str, int]:
    """Forward ``x`` once; how many candidates of each edge ran (and the input channels they saw)."""
    calls, handles = {}, []
    for edge, ops in edges(net):
        calls[edge] = 0
        for op_name, op in ops.items():
            def hook(module, args, edge=edge, op_name=op_name):
                calls[edge] += 1
                if channels is not None:
                    channels.setdefault(edge, set()).add(args[0].shape[1])
            handles.append(op.register_forward_pre_hook(hook))
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def batch(kind: str) -> torch.Tensor:
    return torch.rand(2, 3, 3, 16, 16)


# --------------------------------------------------------------------------------------------------
# registry


def test_new_strategies_are_registered_with_documented_defaults():
    assert find_strategy("pcdarts").defaults["k"] == 4 and find_strategy("pcdarts").defaults["edge_normalization"]
    assert find_strategy("pcdarts").one_shot and find_strategy("spos").one_shot
    assert {"population", "generations", "parents", "mutation_prob", "eval_batches", "seed"} <= set(
        find_strategy("spos").defaults)
    with pytest.raises(ValueError, match="k"):
        find_strategy("pcdarts").build({"k": 0})


# --------------------------------------------------------------------------------------------------
# pcdarts


@pytest.mark.parametrize("kind", ["dag", "chain", "rrgnet"])
def test_pcdarts_runs_the_candidates_on_a_kth_of_the_channels(kind):
    net, _ = supernet(kind, "pcdarts", k=4)
    seen: dict = {}
    calls = count_calls(net, batch(kind), channels=seen)
    assert calls and all(n > 0 for n in calls.values())
    full, _ = supernet(kind, "darts")
    seen_full: dict = {}
    count_calls(full, batch(kind), channels=seen_full)
    for edge, widths in seen.items():   # every candidate sees C/4 channels where darts's sees C
        (c,) = seen_full[edge]
        assert widths == {max(1, c // 4)}, (edge, widths, c)
    assert any(c >= 4 for (c,) in seen_full.values())
    # the candidates are built at C/K: fewer weights than darts's
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in full.parameters())


def test_pcdarts_partial_mix_bypasses_and_shuffles_channels():
    from strategies.partial_channel import channel_shuffle, partial_mix

    x = torch.arange(8.0).view(1, 8, 1, 1)
    out = partial_mix(x, [nn.Identity()], torch.tensor([0.0, 1.0]), 4)   # op weight 0: the partial path is 0
    assert out.flatten().tolist() == [0, 2, 4, 6, 0, 3, 5, 7]            # shuffle of [0 0 | 2 3 4 5 6 7]
    assert channel_shuffle(torch.arange(6.0).view(1, 6, 1, 1), 4).flatten().sort().values.tolist() == list(range(6))


def test_pcdarts_search_moves_alphas_and_betas_and_derives_a_valid_genotype(tmp_path, monkeypatch):
    built = capture(monkeypatch, "pcdarts")
    result = tiny_search("pcdarts", tmp_path, k=4, arc_learning_rate=0.05)
    find_space("tmics").validate_genotype(result.genotype)
    cells = [m for m in built[0].oneshot_module.modules() if type(m).__name__ == "PartialChannelMixedCell"]
    assert cells and all(c.partial_k == 4 and c.channels == 8 for c in cells)
    arch_ids = {id(p) for p in built[0].oneshot_module.arch_parameters()}
    betas = [p for c in cells for p in c._arch_beta.values()]
    alphas = [p for c in cells for p in c._arch_alpha.values()]
    assert betas and all(id(p) in arch_ids for p in betas + alphas)
    assert all(p.detach().abs().max() > 0.01 for p in betas + alphas)   # init is 1e-3 * randn: they moved
    # the export has darts's keys, and uses alpha * beta
    darts_keys = set(find_strategy("darts").build().mutate_model(
        find_space("tmics").make_space(find_space("tmics").config("demo", **TINY))).simplify())
    exported = built[0].oneshot_module.export()
    assert set(exported) == darts_keys
    # the betas are in the run's weight history too, a row per node input, as softmax weights
    history = pd.read_csv(result.run_dir / "alphas.csv")
    beta_rows = history[history["label"].str.contains("/beta_")]
    assert set(beta_rows["label"]) == {label for c in cells for label in c._arch_beta}
    last = beta_rows[beta_rows["step"] == beta_rows["step"].max()]
    assert last.groupby("label")["weight"].sum().round(4).eq(1.0).all()


def test_pcdarts_export_ranks_edges_by_alpha_times_beta():
    net, _ = supernet("dag", "pcdarts", k=4)
    cell = next(m for m in net.modules() if type(m).__name__ == "PartialChannelMixedCell")
    with torch.no_grad():
        for p in cell._arch_alpha.values():
            p.zero_()
        cell._arch_alpha[f"{cell.label}/3_0"][1] = 1.0   # node 3: edge from input 0 has the strongest op ...
        cell._arch_beta[f"{cell.label}/beta_3"].copy_(torch.tensor([-5.0, 0.0, 5.0]))   # ... but beta mutes it
    arch = cell.export({})
    assert arch[f"{cell.label}/input_3_0"] == [2] and arch[f"{cell.label}/input_3_1"] == [1]


# --------------------------------------------------------------------------------------------------
# gdas, hard


@pytest.mark.parametrize("kind", ["dag", "chain", "rrgnet"])
def test_gdas_hard_runs_one_candidate_per_edge_and_its_alphas_get_gradients(kind):
    net, strategy = supernet(kind, "gdas", hard=True)
    alphas = list({id(p): p for m in net.modules() if hasattr(m, "arch_parameters")
                   for p in m.arch_parameters()}.values())
    net.train()
    for _ in range(3):
        resample(net)
        calls = count_calls(net, batch(kind))
        assert calls and all(n <= 1 for n in calls.values()), calls          # never more than the sampled one
        assert sum(calls.values()) >= 1    # 0 on an edge that sampled "none" or in an unchosen rrgnet branch
    soft, _ = supernet(kind, "gdas", hard=False)                            # NNI's: every candidate runs
    assert all(n == len(ops) for (e, ops), n in zip(edges(soft), count_calls(soft, batch(kind)).values()))
    # straight-through: the alphas get gradients and move
    optimizer = torch.optim.Adam(alphas, lr=0.1)
    before = [a.detach().clone() for a in alphas]
    reached = set()
    for _ in range(3):
        resample(net)
        optimizer.zero_grad()
        net(batch(kind)).square().mean().backward()
        reached |= {i for i, a in enumerate(alphas) if a.grad is not None and float(a.grad.abs().sum()) > 0}
        optimizer.step()
    # every alpha of a choice that ran gets a gradient (rrgnet: the ops of unchosen branches do not run)
    assert reached == set(range(len(alphas))) if kind != "rrgnet" else len(reached) >= 3
    assert all(not torch.equal(alphas[i], before[i]) for i in reached)


def test_gdas_hard_search_returns_a_valid_genotype(tmp_path):
    result = tiny_search("gdas", tmp_path, hard=True, temperature_init=2.0, temperature_min=0.5)
    find_space("tmics").validate_genotype(result.genotype)


# --------------------------------------------------------------------------------------------------
# spos


@pytest.mark.parametrize("kind", ["dag", "chain", "rrgnet"])
def test_spos_trains_one_path_per_step(kind):
    net, _ = supernet(kind, "spos")
    for _ in range(3):
        arch = resample(net)
        calls = count_calls(net, batch(kind))
        cell_edges = {e: n for e, n in calls.items() if ":" in e}
        layer_edges = {e: n for e, n in calls.items() if ":" not in e}
        assert all(n <= 1 for n in layer_edges.values())                     # one op per LayerChoice that ran
        assert all(n <= 2 for n in cell_edges.values())
        if kind == "dag":   # each node runs its num_ops_per_node sampled (input, op) pairs, no more
            for cell in {e.split(":")[0] for e in cell_edges}:
                assert sum(n for e, n in cell_edges.items() if e.startswith(cell + ":")) == 2 * 2
        assert net.check_contains(arch) is None


def test_spos_evolution_is_valid_deterministic_and_finds_the_best():
    from strategies.single_path import evolve

    net, _ = supernet("dag", "spos")
    choices = {k: v for k, v in net.simplify().items()}
    target = {k: v.random(random_state=__import__("numpy").random.RandomState(1)) for k, v in choices.items()}

    def score(arch):   # the number of labels that match a hidden target architecture
        return float(sum(arch[k] == target[k] for k in arch))

    runs = [evolve(choices, score, population=8, generations=4, parents=3, mutation_prob=0.2, seed=s,
                   is_valid=lambda a: net.check_contains(a) is None) for s in (3, 3, 4)]
    assert runs[0] == runs[1]                                    # deterministic for a seed
    assert runs[0]["generations"] != runs[2]["generations"]      # and the seed matters
    assert net.check_contains(runs[0]["best"]) is None
    assert len(runs[0]["generations"]) == 4 and runs[0]["evaluated"] > 8
    assert runs[0]["score"] >= max(g["best"] for g in runs[0]["generations"])
    assert runs[0]["generations"][-1]["best"] > runs[0]["generations"][0]["best"] or runs[0]["score"] == len(target)


def test_spos_search_evolves_a_valid_genotype(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    built = capture(monkeypatch, "spos")
    result = tiny_search("spos", tmp_path, epochs=1, population=4, generations=2, parents=2)
    find_space("tmics").validate_genotype(result.genotype)
    evolution = built[0].evolution
    assert evolution and evolution["evaluated"] >= 4 and len(evolution["generations"]) == 2
    assert result.genotype.metadata["nni_arch"] == {k: v for k, v in evolution["best"].items()}
    assert "spos evolution" in (tmp_path / "search.log").read_text()
    # the same trained supernet and seed give the same evolution
    again = built[0].run_evolution()
    assert again["best"] == evolution["best"] and again["score"] == pytest.approx(evolution["score"])


# --------------------------------------------------------------------------------------------------
# mixed edges under autocast (strategies/mixing.py)


@pytest.mark.parametrize("strategy", ["darts", "darts2", "tmics", "gdas", "pcdarts"])
def test_mixed_edges_sum_in_bf16_under_autocast_and_exactly_as_nni_in_fp32(strategy):
    from nni.nas.oneshot.pytorch.supermodule.differentiable import DifferentiableMixedCell, DifferentiableMixedLayer

    from nas_restore.precision import resolve_precision

    net, _ = supernet("dag", strategy)
    cells = [m for m in net.modules() if isinstance(m, DifferentiableMixedCell)]
    layers = [m for m in net.modules() if isinstance(m, DifferentiableMixedLayer)]
    assert cells and layers  # the DAG cells and the alignment choice
    x = torch.rand(1, 3, 3, 16, 16)
    resample(net)
    with torch.no_grad():
        ours = net(x)
        cell = cells[0]
        outputs = {}
        hook = cell.register_forward_hook(lambda m, a, out: outputs.update(dtype=out.dtype))
        bf16 = resolve_precision("bf16", "cpu")
        bf16.prepare(net)
        with bf16.autocast():
            mixed = net(x).float()
        hook.remove()
    assert outputs["dtype"] == torch.bfloat16  # the cell's sum stayed bf16 (NNI's would be fp32)
    assert (mixed - ours).abs().max() < 0.1 * ours.abs().max() + 0.05  # the same network, in bf16
    if strategy == "pcdarts":
        return  # its cells are ours (partial channels), not NNI's: nothing of NNI's to compute alike
    # without autocast, the cell computes exactly what NNI's own forward computes
    net = net.float().to(memory_format=torch.contiguous_format)
    states = [torch.rand(1, 8, 16, 16), torch.rand(1, 8, 16, 16)]
    with torch.no_grad():  # (the same Gumbel noise for gdas)
        ours = torch.manual_seed(1) and cell(*states)
        assert torch.equal(ours, torch.manual_seed(1) and DifferentiableMixedCell.forward(cell, *states))
