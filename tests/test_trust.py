"""The trust check of weight sharing: a tiny one-shot search, its kept supernet, fixed architectures, the
rank correlations, resume, the CLI and the refusals."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from nas_restore import cli, config as cfg
from nas_restore.datasets import DataConfig
from nas_restore.nni_layer.space import random_architecture
from nas_restore.nni_layer.supernet import (fixed_architecture, load_supernet_weights, rebuild_supernet,
                                            weight_parameters)
from nas_restore.precision import resolve_precision
from nas_restore.search import SearchConfig, run_search
from nas_restore.statistics import CorrelationCI, rank_correlation_ci
from nas_restore.trust import (InheritedScorer, TrustConfig, TrustError, load_one_shot_run, run_trust,
                               trust_sentence)
from search_spaces import find_space
from strategies import find_strategy

# frames=3: the alignment LayerChoice; ops_per_node=2: cells whose two ops may share an input edge
TINY_SPACE = {"channels": 4, "frames": 3, "cells_per_branch": 1, "nodes_per_cell": 2, "ops_per_node": 2,
              "operations": ["Residualblocks_3_1", "DilConv_3_2", "skip_connect"]}
TRUST = dict(samples=4, standalone_epochs=1, standalone_steps_per_epoch=2, bootstrap_resamples=200, device="cpu")
CLI_TRUST = ["--samples", "4", "--epochs", "1", "--steps-per-epoch", "2", "--resamples", "200", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trust") / "run"
    config = SearchConfig(preset="demo", space_settings=TINY_SPACE, epochs=1, batch_size=4,
                          data=DataConfig(patch_size=16, train_items=8, val_items=8), device="cpu", progress=False)
    run_search(config, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def trusted(run_dir):
    return run_trust(run_dir, TrustConfig(**TRUST))


# --------------------------------------------------------------------------------------------------
# the kept supernet


def test_the_search_keeps_its_supernet_as_plain_tensors(run_dir):
    record = torch.load(run_dir / "supernet.pt", map_location="cpu", weights_only=True)
    assert record["format"] == "nas-restore supernet" and record["version"] == 1
    assert (record["space"], record["preset"], record["strategy"]) == ("tmics", "demo", "darts")
    assert record["space_config"]["channels"] == 4 and record["strategy_options"]["arc_learning_rate"] == 3e-4
    state = record["state_dict"]
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert any("_arch_alpha" in k for k in state) and record["arch_parameters"]
    # it loads into the supernet rebuilt from those settings, and holds the trained weights (not a fresh init)
    spec = find_space("tmics")
    supernet = rebuild_supernet(spec.make_space(spec.config_class.from_dict(record["space_config"])),
                                find_strategy("darts").build())
    fresh = {k: v.clone() for k, v in supernet.state_dict().items()}
    load_supernet_weights(supernet, state)
    assert any(not torch.equal(fresh[k], v) for k, v in supernet.state_dict().items() if "_arch_" not in k)


# --------------------------------------------------------------------------------------------------
# fixing an architecture in a supernet


def _supernets(strategies, space_config, seed=0):
    """Supernets of one space, one per (strategy, options), all with spos's (NNI path sampling) weights."""
    spec = find_space("tmics")
    torch.manual_seed(seed)
    oracle = rebuild_supernet(spec.make_space(space_config), find_strategy("spos").build()).eval()
    shared = oracle.state_dict()
    nets = []
    for name, options in strategies:
        net = rebuild_supernet(spec.make_space(space_config), find_strategy(name).build(options)).eval()
        own = net.state_dict()
        net.load_state_dict({**own, **{k: v for k, v in shared.items() if k in own and own[k].shape == v.shape}})
        nets.append(net)
    return oracle, nets


@pytest.mark.parametrize("strategy,options", [("darts", {}), ("gdas", {"hard": True}), ("gdas", {}), ("tmics", {}),
                                              ("pcdarts", {"k": 1, "edge_normalization": False})])
def test_a_fixed_differentiable_supernet_computes_what_nni_path_sampling_computes(strategy, options):
    # NNI's own single-path supernet (spos) with the same weights is the reference: fixing the architecture of
    # a DARTS-family supernet must give exactly the network of that sample (pcdarts with k=1: no bypass)
    spec = find_space("tmics")
    space_config = spec.config("demo", **TINY_SPACE)
    oracle, (net,) = _supernets([(strategy, options)], space_config)
    x = torch.rand(2, 3, 3, 16, 16)
    logits = {n: p.detach().clone() for n, p in net.named_parameters() if "_arch_" in n}
    with torch.no_grad():
        for seed in range(3):
            arch = random_architecture(spec.make_space(space_config), seed=seed)
            with fixed_architecture(oracle, arch):
                expected = oracle(x)
            with fixed_architecture(net, arch):
                got = net(x)
            assert torch.allclose(got, expected, atol=1e-6), (strategy, seed)
        assert not torch.allclose(net(x), expected)    # outside the block: the supernet again
    assert all(torch.equal(p, logits[n]) for n, p in net.named_parameters() if "_arch_" in n)  # logits put back


@pytest.mark.parametrize("strategy,options", [("darts", {}), ("pcdarts", {"k": 2}), ("gdas", {"hard": True})])
def test_a_fixed_architecture_does_not_depend_on_the_architecture_logits(strategy, options):
    spec = find_space("tmics")
    space_config = spec.config("demo", **TINY_SPACE)
    _, (net,) = _supernets([(strategy, options)], space_config)
    arch = random_architecture(spec.make_space(space_config), seed=4)
    x = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        with fixed_architecture(net, arch):
            before = net(x)
        for name, p in net.named_parameters():
            if "_arch_" in name:
                p.normal_()
        with fixed_architecture(net, arch):
            after = net(x)
    assert torch.allclose(before, after, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# the check, end to end


def test_trust_writes_its_outputs_with_the_searched_genotype_among_the_samples(run_dir, trusted):
    out = run_dir / "trust"
    assert trusted.out_dir == out
    for name in ("trust.csv", "trust.json", "trust.md", "trust.png", "settings.json"):
        assert (out / name).is_file(), name
    searched_id = json.loads((run_dir / "genotype.json").read_text())["id"]
    assert trusted.searched_id == searched_id
    assert [r["genotype_id"] for r in trusted.rows if r["searched"]] == [searched_id]
    assert len({r["genotype_id"] for r in trusted.rows}) == len(trusted.rows) == 4
    for row in trusted.rows:
        assert math.isfinite(row["supernet_psnr"]) and math.isfinite(row["standalone_psnr"])
        assert row["params"] > 0 and row["macs"] > 0 and row["status"] == "done"
        assert (out / "standalone" / row["genotype_id"] / "model.pt").is_file()
    assert sorted(r["supernet_rank"] for r in trusted.rows) == pytest.approx([1, 2, 3, 4])
    assert -1 <= trusted.kendall_tau <= 1 and -1 <= trusted.spearman_rho <= 1
    assert trusted.tau_ci[0] <= trusted.kendall_tau <= trusted.tau_ci[1]
    data = json.loads((out / "trust.json").read_text())
    assert data["kendall_tau"] == pytest.approx(trusted.kendall_tau) and data["sentence"] == trusted.sentence
    assert data["settings"]["standalone_epochs"] == 1 and data["settings"]["standalone_steps"] == 2
    assert data["searched_genotype_id"] == searched_id and len(data["rows"]) == 4
    header = (out / "trust.csv").read_text().splitlines()[0].split(",")
    assert header[:9] == ["genotype_id", "name", "searched", "params", "macs", "supernet_psnr", "standalone_psnr",
                          "supernet_rank", "standalone_rank"]
    text = (out / "trust.md").read_text()
    assert trusted.sentence in text and f"`{searched_id}`" in text and "is one of them" in text
    # the numbers agree with a direct computation from the rows
    x = [r["supernet_psnr"] for r in trusted.rows]
    y = [r["standalone_psnr"] for r in trusted.rows]
    assert trusted.kendall_tau == pytest.approx(rank_correlation_ci(x, y, resamples=10).value)


def test_the_inherited_score_comes_from_the_supernets_weights(run_dir):
    run = load_one_shot_run(run_dir)
    spec = run.space_spec
    scorer = InheritedScorer(run, torch.device("cpu"), resolve_precision("fp32"))
    from nas_restore.datasets import train_val_datasets

    _, val = train_val_datasets(run.search.data, run.space_config.frames, run.search.seed)
    arch = spec.to_nni_arch(run.genotype)
    before = scorer.score(arch, val, 4)
    assert scorer.score(arch, val, 4) == before  # deterministic
    logits = [p for n, p in scorer.supernet.named_parameters() if "_arch_" in n]
    with torch.no_grad():
        for p in logits:
            p.add_(torch.randn_like(p))
    assert scorer.score(arch, val, 4) == pytest.approx(before, abs=1e-4)  # the architecture is fixed
    with torch.no_grad():
        for _, p in weight_parameters(scorer.supernet):
            p.add_(0.05 * torch.randn_like(p))
    assert abs(scorer.score(arch, val, 4) - before) > 1e-3  # the weights are the supernet's


def test_a_rerun_skips_finished_trainings_and_more_samples_train_only_the_new_ones(run_dir, trusted, monkeypatch):
    import nas_restore.trust as trust

    def no_training(*args, **kwargs):
        raise AssertionError("a finished standalone training was run again")

    with monkeypatch.context() as patch:
        patch.setattr(trust, "retrain", no_training)
        again = run_trust(run_dir, TrustConfig(**TRUST))
    assert again.trained == [] and sorted(again.skipped) == sorted(r["genotype_id"] for r in trusted.rows)
    assert again.kendall_tau == pytest.approx(trusted.kendall_tau)
    more = run_trust(run_dir, TrustConfig(**{**TRUST, "samples": 5}))
    assert len(more.rows) == 5 and len(more.trained) == 1 and len(more.skipped) == 4
    assert [r["genotype_id"] for r in more.rows[:4]] == [r["genotype_id"] for r in trusted.rows]


def test_other_standalone_settings_on_the_same_folder_are_refused(run_dir, trusted):
    with pytest.raises(TrustError, match="standalone_epochs"):
        run_trust(run_dir, TrustConfig(**{**TRUST, "standalone_epochs": 2}))


def test_the_cli_resumes_and_prints_the_figures(run_dir, trusted, capsys):
    assert cli.main(["trust", str(run_dir), *CLI_TRUST, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "finished earlier, skipped" in out and "Kendall tau" in out and "Spearman rho" in out
    assert f"*{trusted.searched_id}" in out and "trust.png" in out
    assert cli.main(["trust", str(run_dir), *CLI_TRUST, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["searched_genotype_id"] == trusted.searched_id and -1 <= data["kendall_tau"] <= 1
    assert data["trained"] == [] and data["out"] == str(run_dir / "trust")


# --------------------------------------------------------------------------------------------------
# folders that are not a one-shot run


def test_a_multi_trial_run_is_refused(tmp_path, capsys):
    run = tmp_path / "evo"
    run.mkdir()
    cfg.save_yaml(SearchConfig(strategy="evolution"), run / "config.yaml")
    (run / "trials.csv").write_text("trial,status\n")
    assert cli.main(["trust", str(run), *CLI_TRUST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "multi-trial run" in err and "no supernet" in err


def test_a_retraining_folder_is_refused(tmp_path):
    folder = tmp_path / "retrained"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"")
    with pytest.raises(TrustError, match="retraining folder"):
        run_trust(folder, TrustConfig(**TRUST))
    with pytest.raises(TrustError, match="not a folder"):
        run_trust(tmp_path / "absent", TrustConfig(**TRUST))


def test_a_run_without_supernet_says_to_search_again(run_dir, tmp_path):
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("supernet.pt", "trust", "nni"))
    with pytest.raises(TrustError, match="no supernet.pt.*re-run the search with this version"):
        run_trust(old, TrustConfig(**TRUST))
    assert not (old / "trust").exists()  # refused before writing anything
    (old / "supernet.pt").write_bytes(b"not a torch file")
    with pytest.raises(TrustError, match="cannot be read as a kept supernet"):
        run_trust(old, TrustConfig(**TRUST))


def test_too_few_samples_are_a_config_error():
    with pytest.raises(cfg.ConfigError, match="samples must be >= 3"):
        cfg.from_dict(TrustConfig, {"samples": 2}, "trust")


# --------------------------------------------------------------------------------------------------
# the statistics and the verdict


def test_rank_correlations_of_hand_made_rankings():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    swapped = [1.0, 2.0, 3.0, 5.0, 4.0]                 # one discordant pair of ten
    tau = rank_correlation_ci(x, swapped, "kendall", resamples=500, seed=1)
    rho = rank_correlation_ci(x, swapped, "spearman", resamples=500, seed=1)
    assert tau.value == pytest.approx(0.8) and rho.value == pytest.approx(0.9)   # (9-1)/10; 1 - 6*2/(5*24)
    assert -1 <= tau.lo <= tau.value <= tau.hi <= 1 and tau.n == 5 and 0 < tau.valid_resamples <= 500
    reversed_ = rank_correlation_ci(x, x[::-1], "kendall", resamples=200)
    assert reversed_.value == pytest.approx(-1.0) and reversed_.hi == pytest.approx(-1.0)
    same = rank_correlation_ci(x, [10 * v for v in x], "spearman", resamples=200)
    assert same.value == pytest.approx(1.0) and same.lo == pytest.approx(1.0)
    # the same inputs and seed give the same interval; the interval narrows with more items
    assert rank_correlation_ci(x, swapped, resamples=500, seed=1) == tau
    rng = np.random.default_rng(0)
    many = np.arange(40.0)
    noisy = many + rng.normal(0, 8, size=40)
    wide = rank_correlation_ci(many[:8], noisy[:8], resamples=500)
    narrow = rank_correlation_ci(many, noisy, resamples=500)
    assert narrow.hi - narrow.lo < wide.hi - wide.lo and narrow.lo > 0
    constant = rank_correlation_ci(x, [3.0] * 5, resamples=10)
    assert math.isnan(constant.value)
    assert math.isnan(rank_correlation_ci([1.0, 2.0], [2.0, 1.0]).lo)
    with pytest.raises(ValueError, match="method"):
        rank_correlation_ci(x, x, "pearson")
    with pytest.raises(ValueError, match="finite"):
        rank_correlation_ci(x, [1.0, 2.0, math.nan, 4.0, 5.0])


def _ci(value, lo, hi, n=8):
    return CorrelationCI(method="kendall", value=value, lo=lo, hi=hi, p_value=0.01, confidence=0.95,
                         resamples=2000, valid_resamples=2000, n=n)


def test_the_sentence_says_whether_the_ranking_can_be_trusted():
    assert "agrees with standalone training" in trust_sentence(_ci(0.62, 0.21, 0.88))
    assert trust_sentence(_ci(0.62, 0.21, 0.88)).startswith("Kendall tau 0.62 [0.21, 0.88] (95 % interval, 8 ")
    assert "agrees only weakly" in trust_sentence(_ci(0.3, 0.05, 0.55))
    nothing = trust_sentence(_ci(0.05, -0.5, 0.6))
    assert "says nothing here" in nothing and "multi-trial strategy" in nothing
    assert "runs against" in trust_sentence(_ci(-0.7, -0.95, -0.3))
    assert "too few" in trust_sentence(_ci(math.nan, math.nan, math.nan, n=2))
