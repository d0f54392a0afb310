"""The one-shot strategies (darts, darts2, gdas, tmics) and the skip guard, on tiny problems."""

import json
import logging

import pytest
import torch

from nas_restore.datasets import DataConfig
from nas_restore.sources import load_genotype
from nas_restore.search import SearchConfig, run_search
from search_spaces import find_space
from strategies import find_strategy, list_strategies
from strategies.second_order import unrolled_arch_gradient
from strategies.skip_guard import SKIP, apply_skip_cap, count_skips

TINY_SPACE = {"channels": 6, "frames": 3, "cells_per_branch": 1, "nodes_per_cell": 2,
              "operations": ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3", "skip_connect"]}
ONE_SHOT = ("darts", "darts2", "gdas", "tmics")


def tiny_config(strategy: str, **overrides) -> SearchConfig:
    settings = dict(preset="demo", space_settings=TINY_SPACE, epochs=2, batch_size=4, strategy=strategy,
                    data=DataConfig(patch_size=16, train_items=8, val_items=8), device="cpu", progress=False)
    return SearchConfig(**{**settings, **overrides})


def capture_strategy(monkeypatch, name: str) -> list:
    """Keep the strategy object a search builds, to look at its one-shot module afterwards."""
    spec = find_strategy(name)
    built, make = [], spec.make

    def keep(**options):
        built.append(make(**options))
        return built[-1]

    monkeypatch.setattr(spec, "make", keep)
    return built


# --------------------------------------------------------------------------------------------------
# registry


def test_every_one_shot_strategy_is_registered_with_documented_defaults():
    specs = {s.name: s for s in list_strategies()}
    for name in ONE_SHOT:
        spec = specs[name]
        assert spec.family == "differentiable" and spec.one_shot and len(spec.description) > 40
        assert "arc_learning_rate" in spec.defaults
    assert specs["darts2"].defaults["xi"] is None
    assert (specs["gdas"].defaults["temperature_init"], specs["gdas"].defaults["temperature_min"]) == (10.0, 0.1)
    assert specs["tmics"].defaults["fusion_parameters"] == "fusion"
    with pytest.raises(ValueError, match="has no option.*temperature"):
        find_strategy("darts2").build({"temperature": 1.0})


# --------------------------------------------------------------------------------------------------
# every strategy searches a tiny TMICS space


@pytest.mark.parametrize("name", ONE_SHOT)
def test_strategy_searches_a_tiny_space_and_returns_a_valid_genotype(name, tmp_path, caplog):
    caplog.set_level(logging.INFO)  # the CLI sets the root level; search.log gets INFO lines then
    result = run_search(tiny_config(name), tmp_path)
    genotype = load_genotype(result.genotype_path)
    find_space("tmics").validate_genotype(genotype)
    assert genotype.metadata["strategy"] == name and genotype.macro["alignment"] in ("ofm", "tgm")
    assert genotype.metadata["search_cost_epochs"] == 2
    anytime = (tmp_path / "anytime.csv").read_text().splitlines()
    assert anytime[0].startswith("cost_seconds,cost_epochs") and len(anytime) == 3
    guard = json.loads((tmp_path / "guard.json").read_text())
    assert guard["cap"] == 2 and all(n <= 2 for n in guard["skips_after"].values())
    assert "skip guard (cap 2" in (tmp_path / "search.log").read_text()


def test_budget_stops_a_search_inside_its_first_epoch_and_records_the_part(tmp_path):
    config = tiny_config("darts", epochs=50, batch_size=2, budget_seconds=0.5,
                         data=DataConfig(patch_size=16, train_items=64, val_items=64))
    result = run_search(config, tmp_path)
    meta = result.genotype.metadata
    assert 0 < meta["search_cost_epochs"] < 50
    rows = (tmp_path / "anytime.csv").read_text().splitlines()[1:]
    assert rows and float(rows[-1].split(",")[1]) == pytest.approx(meta["search_cost_epochs"])


# --------------------------------------------------------------------------------------------------
# darts2: the unrolled architecture gradient


def _tiny_problem():
    """A two-op mixed layer in float64: y = sum_k softmax(a)_k op_k(x; W)."""
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_()
    w2 = torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_()
    head = torch.randn(2, 5, dtype=torch.float64, generator=gen).requires_grad_()
    alpha = (0.3 * torch.randn(3, dtype=torch.float64, generator=gen)).requires_grad_()
    x_tr, x_val = (torch.randn(16, 3, dtype=torch.float64, generator=gen) for _ in range(2))
    y_tr, y_val = (torch.randn(16, 2, dtype=torch.float64, generator=gen) for _ in range(2))
    weights = [w1, w2, head]

    def loss(ws, a, x, y):
        w1_, w2_, head_ = ws
        mix = torch.softmax(a, 0)
        hidden = mix[0] * torch.tanh(x @ w1_.T) + mix[1] * torch.sigmoid(x @ w2_.T) + mix[2] * x @ (w1_ - w2_).T
        return ((hidden @ head_.T - y) ** 2).mean()

    return weights, alpha, loss, (x_tr, y_tr), (x_val, y_val)


def test_second_order_gradient_matches_a_numerical_derivative_of_the_unrolled_loss():
    weights, alpha, loss, train, val = _tiny_problem()
    xi = 0.1
    before = [w.detach().clone() for w in weights]
    (grad,), _ = unrolled_arch_gradient(lambda: loss(weights, alpha, *train), lambda: loss(weights, alpha, *val),
                                        weights, [alpha], xi)
    assert all(torch.equal(w, b) for w, b in zip(weights, before))  # the weights are restored exactly

    def unrolled(a: torch.Tensor) -> torch.Tensor:
        ws = [w.detach().clone().requires_grad_() for w in weights]
        grads = torch.autograd.grad(loss(ws, a, *train), ws)
        return loss([w - xi * g for w, g in zip(ws, grads)], a, *val)

    h = 1e-6
    numeric = torch.zeros_like(alpha)
    for i in range(alpha.numel()):
        step = torch.zeros_like(alpha)
        step[i] = h
        numeric[i] = (unrolled(alpha.detach() + step).item() - unrolled(alpha.detach() - step).item()) / (2 * h)
    rel = (grad - numeric).norm() / numeric.norm()
    assert rel < 1e-4, f"relative error {rel:.2e}: {grad.tolist()} vs {numeric.tolist()}"
    # and the second-order term matters here: the first-order gradient is clearly different
    first = torch.autograd.grad(loss(weights, alpha, *val), alpha)[0]
    assert (first - numeric).norm() / numeric.norm() > 100 * rel


def test_second_order_with_xi_zero_is_the_first_order_gradient():
    weights, alpha, loss, train, val = _tiny_problem()
    (grad,), _ = unrolled_arch_gradient(lambda: loss(weights, alpha, *train), lambda: loss(weights, alpha, *val),
                                        weights, [alpha], 0.0)
    assert torch.allclose(grad, torch.autograd.grad(loss(weights, alpha, *val), alpha)[0])


# --------------------------------------------------------------------------------------------------
# tmics: the triple-level scheme


def test_tmics_steps_lambda_on_the_validation_batch_with_its_own_optimiser(tmp_path, monkeypatch):
    from strategies.triple_level import matches, module_class

    built = capture_strategy(monkeypatch, "tmics")
    cls = module_class()
    seen = {"upper_is_val": [], "steps": 0}
    training_step, upper_step = cls.training_step, cls.upper_step

    def spy_training_step(self, batch, batch_idx):
        self._val_batch = batch["val"]
        seen["steps"] += 1
        return training_step(self, batch, batch_idx)

    def spy_upper_step(self, val_batch, batch_idx):
        seen["upper_is_val"].append(val_batch is self._val_batch)
        return upper_step(self, val_batch, batch_idx)

    monkeypatch.setattr(cls, "training_step", spy_training_step)
    monkeypatch.setattr(cls, "upper_step", spy_upper_step)
    space = find_space("tmics")
    torch.manual_seed(0)
    initial = {n: p.detach().clone() for n, p in
               space.make_space(space.config("demo", **TINY_SPACE)).named_parameters() if matches(n, ["fusion"])}
    result = run_search(tiny_config("tmics"), tmp_path)
    find_space("tmics").validate_genotype(result.genotype)

    module = built[0].oneshot_module
    fusion = {n: p for n, p in module.training_module.model.named_parameters() if matches(n, ["fusion"])}
    assert set(fusion) == set(initial) and len(fusion) == 4   # AAS: conv + head, weights and biases
    fusion_ids = {id(p) for p in fusion.values()}
    alpha_ids = {id(p) for p in module.arch_parameters()}
    weight_opt, *others = module.trainer.optimizers
    weight_ids = {id(p) for g in weight_opt.param_groups for p in g["params"]}
    assert not weight_ids & fusion_ids and not weight_ids & alpha_ids and weight_ids
    upper = [o for o in others if getattr(o, "is_upper_optimizer", False)]
    arch = [o for o in others if not getattr(o, "is_upper_optimizer", False)]
    assert len(upper) == len(arch) == 1
    assert {id(p) for g in upper[0].param_groups for p in g["params"]} == fusion_ids
    assert {id(p) for g in arch[0].param_groups for p in g["params"]} == alpha_ids
    # lambda moved, and only through upper steps, each on the step's validation batch
    assert seen["steps"] == 4 and seen["upper_is_val"] == [True] * 4
    assert all(upper[0].state[p]["step"] == 4 for p in fusion.values())
    assert max((p.detach() - initial[n]).abs().max() for n, p in fusion.items()) > 0
    assert "upper_loss" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


def test_tmics_names_the_missing_fusion_parameters(tmp_path):
    with pytest.raises(ValueError, match=r"no parameters under \['nonexistent'\].*fusion_parameters"):
        run_search(tiny_config("tmics", strategy_options={"fusion_parameters": "nonexistent"}), tmp_path)


# --------------------------------------------------------------------------------------------------
# gdas: NNI's GumbelDARTS with a temperature schedule


def test_gdas_anneals_the_gumbel_temperature(tmp_path, monkeypatch):
    from nni.nas.oneshot.pytorch.supermodule.differentiable import GumbelSoftmax

    built = capture_strategy(monkeypatch, "gdas")
    run_search(tiny_config("gdas", epochs=2, strategy_options={"temperature_init": 4.0, "temperature_min": 1.0,
                                                               "hard": True}), tmp_path)
    softmaxes = [m for m in built[0].oneshot_module.modules() if isinstance(m, GumbelSoftmax)]
    assert softmaxes and all(m.tau == pytest.approx(2.5) and m.hard for m in softmaxes)  # epoch 1 of 2


# --------------------------------------------------------------------------------------------------
# the skip guard


def _contrived():
    """A cell with 4 skip edges of different strengths, and a chain cell of 3 skips."""
    names = ["conv", "dil", SKIP, "none"]
    arch = {"c/op_2_0": SKIP, "c/input_2_0": [0], "c/op_2_1": SKIP, "c/input_2_1": [1],
            "c/op_3_0": SKIP, "c/input_3_0": [2], "c/op_3_1": SKIP, "c/input_3_1": [0],
            "ch/chain_0": SKIP, "ch/chain_1": SKIP, "ch/chain_2": SKIP, "alignment": "tgm"}
    alphas = {
        "c/2_0": (torch.tensor([0.0, 1.0, 3.0, 0.0]), names),   # strong skip; next best: dil
        "c/2_1": (torch.tensor([0.5, 0.0, 1.0, 0.0]), names),   # weak skip; next best: conv
        "c/3_2": (torch.tensor([0.0, 0.2, 2.0, 0.0]), names),   # strong skip
        "c/3_0": (torch.tensor([0.3, 0.0, 0.1, 5.0]), names),   # weakest skip ("none" wins the edge)
        "ch/chain_0": (torch.tensor([0.0, 0.0, 2.0]), names[:3]),
        "ch/chain_1": (torch.tensor([2.0, 0.0, 1.0]), names[:3]),
        "ch/chain_2": (torch.tensor([0.0, 1.0, 3.0]), names[:3]),
    }
    return arch, alphas


def test_skip_cap_keeps_the_strongest_skips_and_rederives_the_rest():
    arch, alphas = _contrived()
    assert count_skips(arch) == {"c": 4, "ch": 3}
    guarded, report = apply_skip_cap(arch, alphas, cap=2)
    assert count_skips(guarded) == report.skips_after == {"c": 2, "ch": 2}
    assert guarded["c/op_2_0"] == SKIP and guarded["c/op_3_0"] == SKIP        # the two strongest stay
    assert guarded["c/op_2_1"] == "conv" and guarded["c/op_3_1"] == "conv"    # next best, never "none"
    assert {r.key for r in report.replaced["c"]} == {"c/op_2_1", "c/op_3_1"}
    assert guarded["ch/chain_1"] == "conv" and guarded["alignment"] == "tgm"
    assert {k: v for k, v in guarded.items() if "input" in k} == {k: v for k, v in arch.items() if "input" in k}
    zero, _ = apply_skip_cap(arch, alphas, cap=0)
    assert count_skips(zero) == {"c": 0, "ch": 0} and zero["c/op_2_0"] == "dil"
    off, report = apply_skip_cap(arch, alphas, cap=None)
    assert off == arch and not report.replaced


def test_skip_guard_settings_are_validated():
    with pytest.raises(ValueError, match="skip guard cap must be an integer >= 0 or None"):
        SearchConfig(skip_cap=-1)


def test_skip_cap_and_early_stop_in_a_real_search(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # the derived tiny cells hold skip edges from the start (alphas ~ 0): cap 0 removes all, stop 0 stops
    result = run_search(tiny_config("darts", epochs=3, skip_cap=0, skip_stop=0), tmp_path)
    guard = json.loads((tmp_path / "guard.json").read_text())
    assert sum(guard["skips_before"].values()) > 0 and sum(guard["skips_after"].values()) == 0
    assert guard["stopped_at_epoch"] == 0 and result.genotype.metadata["search_cost_epochs"] == 1
    assert all(e.op != SKIP for cell in result.genotype.cells.values() for node in cell.nodes for e in node)
    log = (tmp_path / "search.log").read_text()
    assert "stopping the search after epoch 0" in log and "skip guard: cell" in log
