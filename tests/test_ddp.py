"""Several processes on the existing engine: `retrain --devices 2` (Lightning DDP, gloo on the CPU) and a
one-shot search whose architecture weights stay identical on every process.

The retraining test runs the real command twice, as a user would: one process with batch 2B, and two
processes with batch B each. The two processes split every batch of the one-process order
(training.EpochShuffle), so both take the same optimiser steps on the same data; the results may differ
only by float32 rounding (the two halves' gradients are summed by the all-reduce, the one process sums
the whole batch itself), hence the tolerance below.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from nas_restore.build import load_trained
from nas_restore.cli import main
from nas_restore.sources import load_genotype
from nas_restore.threads import available_cores, process_alive
from nas_restore.training import EpochShuffle, ValidationShard
from search_spaces import find_space

# Float32 reassociation only: one process sums the gradient over its 2B items, two processes each sum B and
# the all-reduce adds the halves; the epoch means are summed in another order too. Measured on this test's 12
# steps: weights within 7e-8, losses within 4e-6 (relative), validation PSNR within 4e-6 dB. The bounds leave
# one to two orders of magnitude for other CPUs' kernels and stay far below what a real difference gives (the
# data order Lightning's own DistributedSampler picks moves the epoch losses by ~0.08, 10 %). Longer runs drift
# further apart through Adam's normalised steps (48 steps of a 16-channel network: weights 3e-3, PSNR 0.02 dB),
# as much as one process run with 1 thread instead of 2 drifts from itself (2e-3): a longer comparison must
# allow for that, not for a DDP error.
WEIGHT_TOLERANCE = 1e-5      # max |w_ddp - w_one| over all weights (weights are ~0.1)
LOSS_TOLERANCE = 1e-4        # relative, per-epoch train and validation losses
PSNR_TOLERANCE = 1e-3        # dB, per-epoch validation PSNR

# The child: `nas-restore` as a user runs it, plus a probe that records in PROBE_DIR, per process, its rank,
# pid, torch threads and the training items each epoch drew, and in a process other than rank 0 every file
# opened for writing under the run folder. Lightning starts the second process by running this same script.
CHILD = textwrap.dedent("""
    import builtins, io, json, os, sys
    from pathlib import Path

    probe_dir, out = Path(os.environ["PROBE_DIR"]), Path(os.environ["PROBE_OUT"]).resolve()
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    writes = probe_dir / f"writes-{rank}.txt"
    original_open = builtins.open

    def watched_open(file, mode="r", *args, **kwargs):
        if rank != 0 and any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)):
            path = Path(os.fspath(file)).resolve()
            if path == out or out in path.parents:
                with original_open(writes, "a") as handle:
                    handle.write(f"{path}\\n")
        return original_open(file, mode, *args, **kwargs)

    builtins.open = io.open = watched_open

    import pytorch_lightning as pl
    import torch

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            sampler = trainer.train_dataloader.sampler
            record = {"rank": trainer.global_rank, "world": trainer.world_size, "pid": os.getpid(),
                      "epoch": trainer.current_epoch, "threads": torch.get_num_threads(), "items": list(sampler),
                      "sampler": type(sampler).__name__}
            with original_open(probe_dir / f"probe-{trainer.global_rank}.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\\n")

    original = pl.Trainer.__init__

    def with_probe(self, *args, callbacks=None, **kwargs):
        original(self, *args, callbacks=[*(callbacks or []), Probe()], **kwargs)

    pl.Trainer.__init__ = with_probe
    from nas_restore.cli import main
    sys.exit(main())
""")


def _run(tmp_path: Path, name: str, *flags: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    out, probes = tmp_path / name, tmp_path / f"{name}-probe"
    probes.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("NAS_RESTORE_THREADS", "OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    # a jobs registry of its own: the processes share the cores among themselves, not with other tests' jobs
    (tmp_path / "jobs").mkdir(exist_ok=True)
    env.update(TMPDIR=str(tmp_path / "jobs"), PROBE_DIR=str(probes), PROBE_OUT=str(out), PYTHONHASHSEED="0")
    argv = ["retrain", str(tmp_path / "genotype.json"), "--out", str(out), "--config", str(tmp_path / "tiny.yaml"),
            "--device", "cpu", "--no-progress", *flags]
    done = subprocess.run([sys.executable, str(script), *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    return done, out, probes


def _probes(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("probe-*.jsonl")) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    rescnn = find_space("rescnn")
    rescnn.to_genotype({}, rescnn.config(channels=4, blocks=1, frames=1), {"name": "tiny"}).save(
        tmp_path / "genotype.json")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(
        {"train": {"epochs": 3, "seed": 5},
         "data": {"train_items": 16, "val_items": 6, "patch_size": 16}}))
    one = _run(tmp_path, "one", "--batch-size", "4")
    two = _run(tmp_path, "two", "--batch-size", "2", "--devices", "2")
    for done, _, _ in (one, two):
        assert done.returncode == 0, done.stderr
    return one, two


def test_two_processes_match_one_process_with_the_whole_batch(runs):
    (_, one, _), (_, two, _) = runs
    a, b = pd.read_csv(one / "metrics.csv"), pd.read_csv(two / "metrics.csv")
    assert list(a["epoch"]) == list(b["epoch"]) == [0, 1, 2]
    for column in ("train_loss", "val_loss"):
        assert b[column].tolist() == pytest.approx(a[column].tolist(), rel=LOSS_TOLERANCE, abs=0), column
    assert b["val_psnr"].tolist() == pytest.approx(a["val_psnr"].tolist(), rel=0, abs=PSNR_TOLERANCE)
    assert b["lr"].tolist() == a["lr"].tolist()  # the same schedule, stepped per epoch
    wa = torch.load(one / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(two / "model.pt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= WEIGHT_TOLERANCE, f"weights differ by up to {worst:g}"


def test_two_processes_ran_on_their_share_of_the_cores_and_of_every_batch(runs):
    _, (done, _, probes) = runs
    records = _probes(probes)
    ranks = {r["rank"] for r in records}
    assert ranks == {0, 1} and {r["world"] for r in records} == {2}
    assert len({r["pid"] for r in records}) == 2  # two processes
    assert {r["threads"] for r in records} == {max(1, available_cores() // 2)}  # cores / ranks each
    for epoch in (0, 1, 2):
        by_rank = {r["rank"]: r["items"] for r in records if r["epoch"] == epoch}
        shuffle = EpochShuffle(16, 5)
        shuffle.set_epoch(epoch)
        order = shuffle.order()
        assert by_rank[0] == order[0::2] and by_rank[1] == order[1::2]  # one order, split; every item once
    assert all(not process_alive(r["pid"]) for r in records)  # nothing of the run still runs


def test_only_rank_zero_wrote_the_run_folder_and_model_pt_was_complete_on_return(runs):
    _, (done, two, probes) = runs
    assert not any(probes.glob("writes-*.txt")), (probes / "writes-1.txt").read_text()  # rank 1 wrote nothing
    assert done.stdout.count("best val PSNR") == 1  # rank 1 printed nothing
    assert "error" not in done.stderr.lower() and "warn" not in done.stderr.lower(), done.stderr
    assert sorted(p.name for p in (two / "logs").iterdir()) == ["version_0"]  # one CSV log, not one per process
    rows = pd.read_csv(two / "metrics.csv")
    assert list(rows["epoch"]) == [0, 1, 2] and rows.notna().all().all()
    model, genotype = load_trained(two / "model.pt")  # whole: weights, genotype and its fingerprint
    assert genotype.genotype_id() == load_genotype(two / "genotype.json").genotype_id()
    best = torch.load(two / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, best["model." + k]) for k, v in model.state_dict().items())  # the best epoch's
    assert not (two / ".lock").exists() and json.loads((two / "run.json").read_text())["kind"] == "retrain"
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_samplers_split_one_order_across_processes(monkeypatch):
    import nas_restore.training as training

    shuffle = EpochShuffle(7, seed=1)
    whole = shuffle.order()
    assert list(shuffle) == whole and len(shuffle) == 7
    parts = {}
    for rank in range(3):
        monkeypatch.setattr(training, "distributed_shard", lambda rank=rank: (rank, 3))
        parts[rank] = list(shuffle)
        assert len(shuffle) == len(parts[rank]) == 3  # 7 items padded to 9, 3 per process
        assert list(ValidationShard(7)) == list(range(rank, 7, 3))  # validation: each item once, no padding
        assert list(ValidationShard(2)) == [0, 1]  # fewer items than processes: all everywhere
    padded = whole + whole[:2]
    assert [parts[k % 3][k // 3] for k in range(9)] == padded  # batch k of 3 processes = batch k of one


def test_devices_from_python_are_refused_with_the_way_out(tmp_path, capsys):
    rescnn = find_space("rescnn")
    path = rescnn.to_genotype({}, rescnn.config(channels=4, blocks=1, frames=1), {}).save(tmp_path / "g.json")
    code = main(["retrain", str(path), "--out", str(tmp_path / "r"), "--devices", "2", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "from a shell" in err and "--devices" in err
    assert not (tmp_path / "r").exists()


def test_studies_refuse_several_processes_per_retraining():
    from nas_restore.compare import CompareConfig
    from nas_restore.rank import RankConfig

    for kind in (CompareConfig, RankConfig):
        with pytest.raises(ValueError, match="retrain a single genotype on several devices"):
            kind.from_dict({"retrain": {"train": {"devices": 2}}})


# ---------------------------------------------------------------- AlphaSync on two gloo processes


def _alphas_on_two_processes(tmp_path: Path) -> list[dict]:
    """Two gloo processes (a FileStore rendezvous), each running tests/_ddp_worker.py with and without the sync."""
    import torch.multiprocessing as mp

    from tests._ddp_worker import worker

    mp.spawn(worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_alpha_sync_steps_every_process_alike_with_the_mean_gradient(tmp_path):
    ranks = _alphas_on_two_processes(tmp_path)
    synced = [r["synced"] for r in ranks]
    for name in ("alpha", "beta"):
        assert torch.equal(synced[0][name], synced[1][name]), name  # bit-identical on both processes
    assert synced[0]["history"] == synced[1]["history"] and len(synced[0]["history"]) == 3
    assert all(len(set(digests)) == 1 for _, digests in synced[0]["history"])
    # the same steps in one process, with the mean of the two processes' gradients, from rank 0's start
    alpha = torch.nn.Parameter(torch.linspace(-1, 1, 4))
    beta = torch.nn.Parameter(torch.zeros(3))
    arch = torch.optim.Adam([alpha, beta], lr=0.1)
    for _ in range(3):
        grads = [2 * (alpha.detach() - torch.arange(4.0) * (r + 1)) for r in (0, 1)]
        alpha.grad = (grads[0] + grads[1]) / 2
        beta.grad = torch.full((3,), 0.5)  # rank 1 had none: it counts as zero in the mean
        arch.step()
    assert torch.allclose(synced[0]["alpha"], alpha.detach(), rtol=0, atol=1e-6)
    assert torch.allclose(synced[0]["beta"], beta.detach(), rtol=0, atol=1e-6)

    assert synced[0]["hooks_left"] == 0  # the optimiser is left as it was found

    loose = [r["loose"] for r in ranks]  # the same, watched only: the processes part
    assert not torch.equal(loose[0]["alpha"], loose[1]["alpha"])
    assert all(len(set(digests)) == 2 for _, digests in loose[0]["history"])


# ---------------------------------------------------------------- a one-shot search on two processes

# The child: `nas-restore search` as a user runs it, plus a probe that keeps, per process, the digests of the
# architecture weights that AlphaSync gathered from both processes after every architecture step, and the
# genotype the process derived; ALPHA_SYNC=0 makes AlphaSync only watch (what happens without the sync).
SEARCH_CHILD = textwrap.dedent("""
    import builtins, io, json, os, sys
    from pathlib import Path

    probe_dir, out = Path(os.environ["PROBE_DIR"]), Path(os.environ["PROBE_OUT"]).resolve()
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    original_open = builtins.open

    def watched_open(file, mode="r", *args, **kwargs):
        if rank != 0 and any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)):
            path = Path(os.fspath(file)).resolve()
            if path == out or out in path.parents:
                with original_open(probe_dir / f"writes-{rank}.txt", "a") as handle:
                    handle.write(f"{path}\\n")
        return original_open(file, mode, *args, **kwargs)

    builtins.open = io.open = watched_open

    import nas_restore.nni_layer.ddp as ddp
    import nas_restore.search as search

    sync = os.environ["ALPHA_SYNC"] == "1"
    original_init, original_end = ddp.AlphaSync.__init__, ddp.AlphaSync.on_train_end

    def init(self, **kwargs):
        original_init(self, sync=sync)

    def end(self, trainer, module):
        with original_open(probe_dir / f"sync-{trainer.global_rank}.json", "w") as handle:
            json.dump({"history": [[s.step, s.digests] for s in self.history], "repaired": self.repaired}, handle)
        return original_end(self, trainer, module)

    ddp.AlphaSync.__init__, ddp.AlphaSync.on_train_end = init, end
    original_search = search._search

    def traced(config, run_dir, *args, **kwargs):
        result = original_search(config, run_dir, *args, **kwargs)
        with original_open(probe_dir / f"genotype-{rank}.json", "w") as handle:
            json.dump(result.genotype.to_dict(), handle)
        return result

    search._search = traced
    from nas_restore.cli import main
    sys.exit(main())
""")

TINY_TMICS = {"channels": 6, "frames": 1, "cells_per_branch": 1, "nodes_per_cell": 2,
              "operations": ["Residualblocks_3_1", "DilConv_3_2", "ECAattention_3", "skip_connect"]}


def _search(tmp_path: Path, name: str, sync: bool) -> tuple[subprocess.CompletedProcess, Path, Path]:
    out, probes = tmp_path / name, tmp_path / f"{name}-probe"
    probes.mkdir()
    script = tmp_path / "search_child.py"
    script.write_text(SEARCH_CHILD)
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"space_settings": TINY_TMICS, "strategy_options": {"arc_learning_rate": 0.03},
                                      "data": {"train_items": 8, "val_items": 8, "patch_size": 16}}))
    env = {**os.environ, "NAS_RESTORE_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "PROBE_DIR": str(probes), "PROBE_OUT": str(out), "ALPHA_SYNC": "1" if sync else "0"}
    argv = ["search", "--space", "tmics", "--preset", "demo", "--strategy", "darts2", "--epochs", "2",
            "--batch-size", "2", "--config", str(config), "--out", str(out), "--device", "cpu", "--devices", "2",
            "--no-progress"]
    done = subprocess.run([sys.executable, str(script), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    return done, out, probes


def _sync_records(probes: Path) -> dict[int, dict]:
    return {rank: json.loads((probes / f"sync-{rank}.json").read_text()) for rank in (0, 1)}


@pytest.mark.slow
def test_a_search_on_two_processes_keeps_the_architecture_weights_identical_after_every_step(tmp_path):
    """darts2 computes the alphas' gradient with torch.autograd.grad, which DDP never sees: without AlphaSync
    the two processes' alphas part from the first architecture step on (here the cells derived differed too)."""
    done, out, probes = _search(tmp_path, "synced", sync=True)
    records = _sync_records(probes)
    history = records[0]["history"]
    assert len(history) >= 2 and records[1]["history"] == history  # both processes gathered the same digests
    assert all(len(set(digests)) == 1 for _, digests in history), history  # bit-identical after every step
    assert [step for step, _ in history] == list(range(1, len(history) + 1))  # every step was checked
    assert records[0]["repaired"] == records[1]["repaired"] == 0  # identical by the sync, not by a repair
    genotypes = [json.loads((probes / f"genotype-{rank}.json").read_text()) for rank in (0, 1)]
    assert genotypes[0]["cells"] == genotypes[1]["cells"]
    # rank 0 alone wrote the run folder, whose genotype is the one both derived
    assert not any(probes.glob("writes-*.txt")), (probes / "writes-1.txt").read_text()
    assert json.loads((out / "genotype.json").read_text())["cells"] == genotypes[0]["cells"]
    assert done.stdout.count("genotype ") == 1 and done.stderr.count("did not decide") <= 1  # rank 1 says nothing

    # the same search without the sync: the processes' architecture weights part
    _, _, loose = _search(tmp_path, "unsynced", sync=False)
    history = _sync_records(loose)[0]["history"]
    assert any(len(set(digests)) > 1 for _, digests in history), "the alphas stayed identical without the sync"


def test_devices_are_for_one_shot_searches(tmp_path):
    from nas_restore.config import ConfigError
    from nas_restore.nni_layer.ddp import search_strategy
    from nas_restore.search import SearchConfig, run_search

    with pytest.raises(ValueError, match="devices must be an integer >= 1"):
        SearchConfig(devices=0)
    with pytest.raises(ConfigError, match="multi-trial; run its trials side by side with --parallel"):
        run_search(SearchConfig(strategy="random", devices=2, device="cpu"), tmp_path / "run")
    assert search_strategy(1, "darts") == "auto"
    assert search_strategy(2, "darts") == search_strategy(2, "gdas") == "ddp"  # every candidate mixed
    assert search_strategy(2, "gdas", {"hard": True}) == "ddp_find_unused_parameters_true"  # sampled candidates
    assert search_strategy(2, "spos") == search_strategy(2, "mine") == "ddp_find_unused_parameters_true"
