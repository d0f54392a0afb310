"""Multi-trial search through NNI (evolution, random, tpe): real tiny trials, the run folder's tables,
failures, budgets, the Pareto front and two trials at once on NNI's training-service engine."""

import json
import math
import os
import pickle
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from nas_restore import multitrial, run_records
from nas_restore.sources import load_genotype
from search_spaces import find_space, validate_genotype
from nas_restore.datasets import DataConfig, train_val_datasets
from nas_restore.errors import UserError
from nas_restore.multitrial import TrialJob, cost_objective, pareto_front, run_trial
from nas_restore.search import SearchConfig, run_search
from strategies import find_strategy

# image mode (no alignment choice), one cell per branch with two nodes of one op each: the input
# choices of the DARTS cells are still there, which NNI's TPE cannot take without our ChoiceSpace
TINY_SPACE = {"channels": 6, "frames": 1, "cells_per_branch": 1, "nodes_per_cell": 2, "ops_per_node": 1,
              "operations": ["DilConv_3_2", "ECAattention_3", "skip_connect"]}


def tiny_config(strategy: str, **overrides) -> SearchConfig:
    values = dict(preset="demo", space_settings=TINY_SPACE, strategy=strategy, max_trials=3, trial_epochs=1,
                  batch_size=4, data=DataConfig(patch_size=16, train_items=8, val_items=4), device="cpu",
                  progress=False)
    values.update(overrides)
    return SearchConfig(**values)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny search per strategy (random also with params as a second objective)."""
    out = {}
    for strategy, extra in (("evolution", {}), ("tpe", {}), ("random", {"objectives": ["psnr", "params"]})):
        out[strategy] = run_search(tiny_config(strategy, **extra), tmp_path_factory.mktemp(strategy))
    return out


@pytest.mark.parametrize("strategy", ["evolution", "random", "tpe"])
def test_each_strategy_runs_trials_and_returns_a_valid_genotype(runs, strategy):
    result = runs[strategy]
    genotype = validate_genotype(load_genotype(result.genotype_path))
    assert set(genotype.cells) == {"dna", "cna"}
    assert {op for cell in genotype.cells.values() for op in cell.ops} <= set(TINY_SPACE["operations"])
    meta = genotype.metadata
    assert meta["strategy"] == strategy and meta["engine"] == "sequential"
    assert meta["trials_run"] == 3 and meta["trials_failed"] == 0 and meta["search_cost_epochs"] == 3
    trials = pd.read_csv(result.run_dir / "trials.csv")
    best = trials.loc[trials["trial"] == meta["best_trial"]].iloc[0]
    assert best["genotype_id"] == genotype.genotype_id()
    assert best["val_psnr"] == pytest.approx(meta["best_val_psnr"])
    assert json.loads(best["arch"]) == meta["nni_arch"]


@pytest.mark.parametrize("strategy", ["evolution", "random", "tpe"])
def test_trials_and_anytime_tables_agree(runs, strategy):
    run_dir = runs[strategy].run_dir
    trials = pd.read_csv(run_dir / "trials.csv")
    anytime = pd.read_csv(run_dir / "anytime.csv")
    assert list(trials["trial"]) == [0, 1, 2] and set(trials["status"]) == {"ok"}
    assert trials["val_psnr"].between(5, 60).all() and trials["val_ssim"].between(-1, 1).all()
    assert (trials["params"] > 0).all() and (trials["flops"] > 0).all()
    assert (trials["end_s"] >= trials["start_s"]).all() and trials["end_s"].is_monotonic_increasing
    assert list(anytime["cost_epochs"]) == [1, 2, 3]
    assert list(anytime["cost_seconds"]) == pytest.approx(list(trials["end_s"]))
    assert list(anytime["val_psnr"]) == pytest.approx(list(trials["val_psnr"]))
    assert list(anytime["best_val_psnr"]) == pytest.approx(list(trials["val_psnr"].cummax()))
    # every trial trained a different network (the strategies deduplicate samples)
    assert trials["arch"].nunique() == 3
    assert not (run_dir / run_records.JOB_FILE).exists()


def test_multi_objective_run_keeps_the_pareto_front_and_picks_its_best_psnr(runs):
    run_dir = runs["random"].run_dir
    trials = pd.read_csv(run_dir / "trials.csv")
    front = pd.read_csv(run_dir / "pareto.csv")
    expected = pareto_front(list(zip(trials["val_psnr"], trials["params"])))
    assert list(front["trial"]) == [int(trials["trial"][i]) for i in expected]
    assert set(front["objective"]) == {"params"}
    meta = load_genotype(runs["random"].genotype_path).metadata
    assert [p["trial"] for p in meta["pareto"]] == list(front["trial"])
    assert meta["best_trial"] == int(front.loc[front["val_psnr"].idxmax(), "trial"])
    assert not (runs["tpe"].run_dir / "pareto.csv").exists()  # PSNR alone: no front


def test_pareto_front_on_hand_made_points():
    points = [(30.0, 100), (31.0, 200), (29.0, 50), (30.0, 150), (28.0, 60), (31.0, 200), (float("nan"), 1),
              (32.0, float("nan")), (25.0, 50)]
    # (30,150) is dominated by (30,100); (28,60) by (29,50); (25,50) by (29,50); NaNs never count;
    # the two equal (31,200) points are both kept
    assert pareto_front(points) == [2, 0, 1, 5]
    assert pareto_front([]) == []
    assert pareto_front([(20.0, 5.0)]) == [0]


def test_objectives_are_checked():
    assert cost_objective(["psnr"]) is None
    assert cost_objective(["PSNR", "latency"]) == "latency"
    for bad in (["params"], ["psnr", "size"], ["psnr", "params", "flops"], []):
        with pytest.raises(ValueError, match="objectives"):
            cost_objective(bad)


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    real = multitrial.train_and_score
    calls = []

    def second_runs_out_of_memory(network, job, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("simulated: out of memory")
        return real(network, job, **kwargs)

    monkeypatch.setattr(multitrial, "train_and_score", second_runs_out_of_memory)
    result = run_search(tiny_config("random", seed=1), tmp_path)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert list(trials["status"]) == ["ok", "failed", "ok"]
    assert "OutOfMemoryError: simulated" in trials["error"][1] and math.isnan(trials["val_psnr"][1])
    meta = result.genotype.metadata
    assert meta["trials_run"] == 3 and meta["trials_failed"] == 1 and meta["best_trial"] in (0, 2)
    anytime = pd.read_csv(tmp_path / "anytime.csv")
    assert list(anytime["cost_epochs"]) == [1, 2, 3] and "failed" in anytime["source"][1]


def test_no_finished_trial_is_an_error_naming_the_tables(tmp_path, monkeypatch):
    def always_fails(network, job, **kwargs):
        raise FloatingPointError("diverged")

    monkeypatch.setattr(multitrial, "train_and_score", always_fails)
    with pytest.raises(RuntimeError, match="no trial finished.*trials.csv"):
        run_search(tiny_config("evolution", max_trials=2), tmp_path)
    assert list(pd.read_csv(tmp_path / "trials.csv")["status"]) == ["failed", "failed"]


def tiny_job(tmp_path, **overrides) -> TrialJob:
    """The job a tiny search hands its trial processes (datasets built as run_search builds them)."""
    config = tiny_config("random")
    space_config = find_space("tmics").config(config.preset, **config.space_settings)
    train, val = train_val_datasets(config.data, space_config.frames, config.seed)
    values = dict(config=config, space="tmics", space_config=space_config,
                  multiples={"dna/input_2_0": {"values": [0, 1], "single": True}}, train_data=train, val_data=val,
                  run_dir=str(tmp_path), device="cpu", started_wall=time.time() - 10, deadline_wall=None, cost="flops",
                  threads=1)
    values.update(overrides)
    return TrialJob(**values)


class Frozen:
    arch = {"dna/op_2_0": "skip_connect"}


def test_a_trial_after_the_deadline_is_skipped_without_training(tmp_path, monkeypatch):
    monkeypatch.setattr(multitrial, "train_and_score", lambda *a, **k: pytest.fail("trained after the deadline"))
    job_path = multitrial.write_job(tiny_job(tmp_path, deadline_wall=time.time() - 1), tmp_path / "job.json", "t0")
    run_trial(Frozen(), str(job_path), job_token="t0", config_class=SearchConfig)
    rows = [json.loads(p.read_text()) for p in (tmp_path / "trials").glob("*.json")]
    assert [r["status"] for r in rows] == ["skipped"] and "budget" in rows[0]["error"]


def _same_items(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for i in range(len(a)) for x, y in zip(a[i], b[i]))


def test_the_job_file_is_plain_json_and_rebuilds_the_same_job(tmp_path):
    job = tiny_job(tmp_path)
    path = multitrial.write_job(job, tmp_path / run_records.JOB_FILE, "tok")
    data = json.loads(path.read_text())  # plain data: the config as a dict, no datasets, nothing pickled
    assert data["format"] == multitrial.JOB_FORMAT and data["config"]["data"]["patch_size"] == 16
    assert data["space_config"] == job.space_config.to_dict() and (data["train_items"], data["val_items"]) == (8, 4)
    back = multitrial.read_job(path, SearchConfig, "tok")
    assert back.config == job.config and back.space_config == job.space_config and back.multiples == job.multiples
    assert (back.run_dir, back.device, back.cost, back.threads, back.deadline_wall) == \
        (job.run_dir, "cpu", "flops", 1, None)
    assert _same_items(back.train_data, job.train_data) and _same_items(back.val_data, job.val_data)
    with pytest.raises(UserError, match="another search"):
        multitrial.read_job(path, SearchConfig, "other-token")


def test_a_damaged_or_foreign_job_file_is_a_clear_error(tmp_path):
    good = json.loads(multitrial.write_job(tiny_job(tmp_path), tmp_path / "good.json", "tok").read_text())
    bad = {
        "garbage": b"\x80\x04\x95 not json",
        "pickle": pickle.dumps({"format": multitrial.JOB_FORMAT}),
        "list": b"[1, 2]",
        "foreign": json.dumps({**good, "format": "something else"}).encode(),
        "version": json.dumps({**good, "version": 99}).encode(),
        "mistyped": json.dumps({**good, "multiples": {"x": {"values": 3}}}).encode(),
        "missing": json.dumps({k: v for k, v in good.items() if k != "config"}).encode(),
        "config": json.dumps({**good, "config": {**good["config"], "bacth_size": 4}}).encode(),
        "space": json.dumps({**good, "space_config": {"channels": -1}}).encode(),
    }
    for name, content in bad.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(content)
        with pytest.raises(UserError, match=r"not a usable multi-trial job file .*start the search again"):
            multitrial.read_job(path, SearchConfig, "tok")
    with pytest.raises(UserError, match="not a usable multi-trial job file"):  # what a trial process meets
        run_trial(Frozen(), str(tmp_path / "garbage.json"), job_token="tok", config_class=SearchConfig)
    with pytest.raises(UserError, match="cannot be read"):
        run_trial(Frozen(), str(tmp_path / "gone.json"), job_token="tok", config_class=SearchConfig)
    assert not list((tmp_path / "trials").glob("*.json"))  # nothing ran


def test_a_budget_spent_before_the_first_trial_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="budget_seconds"):
        run_search(tiny_config("random", budget_seconds=1e-6), tmp_path)


def test_strategies_are_registered_with_documented_defaults():
    for name in ("evolution", "random", "tpe"):
        spec = find_strategy(name)
        assert spec.family == "multi-trial" and not spec.one_shot and spec.defaults["seed"] is None
    with pytest.raises(ValueError, match="sample_size"):
        find_strategy("evolution").build({"population_size": 2, "sample_size": 3})
    tpe = find_strategy("tpe").build({})
    assert tpe.tuner.optimize_mode.value == "maximize"  # trials report PSNR: higher is better


def test_input_choices_become_categoricals_and_decode_back():
    from nas_restore.nni_layer import ChoiceSpace, LayerChoice, ModelSpace, decode_choices, nni, space_choices

    class Space(ModelSpace):
        def __init__(self):
            super().__init__()
            self.op = LayerChoice({"a": torch.nn.Identity(), "b": torch.nn.ReLU()}, label="op")
            self.one = nni.nas.nn.pytorch.InputChoice(3, 1, label="one")
            self.two = nni.nas.nn.pytorch.InputChoice(3, 2, label="two")

    choices, multiples = space_choices(Space())
    assert choices == {"op": ["a", "b"], "one": [0, 1, 2], "two": ["0+1", "0+2", "1+2"]}
    space = ChoiceSpace(choices)
    frozen = space.freeze({"op": "b", "one": 2, "two": "0+2"})
    assert decode_choices(frozen.arch, multiples) == {"op": "b", "one": [2], "two": [0, 2]}
    # the TPE tuner reads every choice as a legacy "choice": the input choices included
    assert {k: v.as_legacy_dict()["_type"] for k, v in space.simplify().items()} == dict.fromkeys(choices, "choice")


def test_training_service_settings_are_passed_to_nni(tmp_path):
    from nas_restore.nni_layer.runner import multitrial_config

    service = {"platform": "remote", "trialGpuNumber": 1, "nniManagerIp": "10.0.0.1",
               "machineList": [{"host": "10.0.0.2", "user": "me", "sshKeyFile": "~/.ssh/id_ed25519"}]}
    config = multitrial_config(tmp_path, max_trials=5, max_seconds=99.5, parallel=3, training_service=service)
    assert type(config.training_service).__name__ == "RemoteConfig"
    assert config.training_service.machine_list[0].host == "10.0.0.2"
    assert config.training_service.trial_gpu_number == 1 and config.training_service.nni_manager_ip == "10.0.0.1"
    assert config.trial_concurrency == 3 and config.max_trial_number == 5 and config.max_experiment_duration == "100s"
    local = multitrial_config(tmp_path, max_trials=4, parallel=2)
    assert type(local.training_service).__name__ == "LocalConfig" and local.trial_concurrency == 2
    sequential = multitrial_config(tmp_path, max_trials=4)
    assert type(sequential.execution_engine).__name__ == "SequentialEngineConfig"
    assert sequential.execution_engine.continue_on_failure and sequential.execution_engine.max_model_count == 4


def test_rows_from_nni_when_trials_could_not_write_theirs():
    records = [{"sample": {"two": "0+2"}, "metric": 21.5, "status": "trained"},
               {"sample": {"two": "1+2"}, "metric": None, "status": "failed"}]
    rows = multitrial.rows_from_nni(records, {"two": {"values": [0, 1, 2], "single": False}})
    assert [r["status"] for r in rows] == ["ok", "failed"] and rows[0]["val_psnr"] == 21.5
    assert rows[0]["arch"] == {"two": [0, 2]} and "failed" in rows[1]["error"]


def test_web_portal_preload_binds_node_servers_to_localhost(tmp_path):
    from nas_restore.nni_layer import nni
    from nas_restore.nni_layer.runner import BIND_LOCALHOST_JS

    node = Path(nni.__file__).parent.parent / "nni_node" / "node"
    if not node.exists():
        pytest.skip("NNI's bundled node is not installed")
    preload = tmp_path / "bind.js"
    preload.write_text(BIND_LOCALHOST_JS)
    script = ("const s=require('http').createServer();"
              "s.listen(0,()=>{console.log(s.address().address);s.close();});")
    env = {**os.environ, "NODE_OPTIONS": f'--require "{preload}"'}
    out = subprocess.run([str(node), "-e", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "127.0.0.1", out.stderr
    plain = subprocess.run([str(node), "-e", script], capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() != "127.0.0.1"  # without it node listens on every interface


def test_parallel_two_runs_two_trials_at_once_on_the_training_service_engine(tmp_path, tmp_path_factory,
                                                                             monkeypatch):
    real_write_job, written = multitrial.write_job, {}
    keep = tmp_path_factory.mktemp("job")  # outside the run folder

    def write_and_keep(job, path, token):
        out = real_write_job(job, path, token)
        written.update(job=job, token=token, copy=keep / "job.json")
        written["copy"].write_text(out.read_text())
        return out

    monkeypatch.setattr(multitrial, "write_job", write_and_keep)
    result = run_search(tiny_config("random", max_trials=2, parallel=2), tmp_path)
    assert result.genotype.metadata["engine"] == "training_service"
    # the trial processes read a plain-JSON job, gone at the end; no pickle anywhere in the run folder
    assert not list(tmp_path.rglob("*.pkl")) and not (tmp_path / run_records.JOB_FILE).exists()
    back = multitrial.read_job(written["copy"], SearchConfig, written["token"])
    assert back.config == written["job"].config and back.space_config == written["job"].space_config
    assert _same_items(back.train_data, written["job"].train_data)
    assert _same_items(back.val_data, written["job"].val_data)
    rows = [json.loads(p.read_text()) for p in (tmp_path / "trials").glob("*.json")]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    assert all(r["nni_trial"] for r in rows)  # each ran as an NNI trial job in its own process
    # NNI launched both trial processes before either ended (their imports take seconds: measured from
    # each process's creation, not from the start of its training, which lags by that import time)
    (a, b) = sorted((r["process_started"], r["ended"]) for r in rows)
    assert b[0] < a[1], f"the trial processes did not overlap: {a} then {b}"
    assert (tmp_path / "nni" / "bind_localhost.js").exists()


def test_parallel_search_from_the_cli_with_a_relative_out(tmp_path, monkeypatch, capsys):
    """`--out runs/x` once failed: NNI's node server, started in NNI's own folder, got the relative preload path."""
    from nas_restore import config as cfg
    from nas_restore.cli import main

    monkeypatch.chdir(tmp_path)
    cfg.save_yaml({"space_settings": TINY_SPACE, "data": {"train_items": 8, "val_items": 4, "patch_size": 16}},
                  "tiny.yaml")
    code = main(["search", "--config", "tiny.yaml", "--preset", "demo", "--strategy", "random", "--max-trials", "2",
                 "--parallel", "2", "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", "runs/x"])
    assert code == 0, capsys.readouterr().err
    meta = load_genotype(tmp_path / "runs" / "x" / "genotype.json").metadata
    assert meta["engine"] == "training_service" and meta["trials_run"] == 2 and meta["trials_failed"] == 0
    assert not list(tmp_path.rglob("*.pkl")) and not (tmp_path / "runs" / "x" / run_records.JOB_FILE).exists()


def test_cli_flags_reach_the_multi_trial_search(tmp_path, capsys):
    from nas_restore import config as cfg
    from nas_restore.cli import main

    cfg.save_yaml({"space_settings": TINY_SPACE, "data": {"train_items": 8, "val_items": 4, "patch_size": 16}},
                  tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    code = main(["search", "--config", str(tmp_path / "tiny.yaml"), "--preset", "demo", "--strategy", "random",
                 "--max-trials", "2", "--trial-epochs", "2", "--objectives", "psnr,flops", "--budget-seconds", "600",
                 "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert code == 0 and "genotype" in capsys.readouterr().out
    meta = load_genotype(out / "genotype.json").metadata
    assert meta["trials_run"] == 2 and meta["trial_epochs"] == 2 and meta["search_cost_epochs"] == 4
    assert meta["objectives"] == ["psnr", "flops"] and set(pd.read_csv(out / "pareto.csv")["objective"]) == {"flops"}
    code = main(["search", "--config", str(tmp_path / "tiny.yaml"), "--strategy", "random", "--objectives",
                 "psnr,size", "--device", "cpu", "--out", str(tmp_path / "bad")])
    assert code == 2 and "objectives" in capsys.readouterr().err


def test_nnis_manager_gets_time_to_start_on_a_loaded_machine(monkeypatch):
    """NNI's launcher gave its node manager 3 s; our set-up waits MANAGER_START_TRIES seconds (one try a second)."""
    from nas_restore.nni_layer import setup
    from nni.experiment import launcher, rest

    calls = []

    def manager_up_late(port, path, prefix=None):
        calls.append(port)
        if len(calls) < 10:  # the manager answers at the 10th try: NNI alone would have failed at the 4th
            raise ConnectionError("not yet")

    monkeypatch.setattr(rest, "get", manager_up_late)
    monkeypatch.setattr(launcher.time, "sleep", lambda s: None)
    launcher._check_rest_server(1234)
    assert len(calls) == 10 and setup.MANAGER_START_TRIES >= 30
