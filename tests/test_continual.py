"""Continual learning across rain types: distillation, the rain-review buffer, the matrix, resuming."""

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nas_restore.cli import main
from nas_restore.config import ConfigError
from nas_restore.continual import (ContinualConfig, DistillConfig, Distiller, FeatureTap, average_final,
                                   backward_transfer, distillation_loss, forgetting, read_matrix_csv,
                                   run_continual, scheme_slug)
from nas_restore.genotype import CellGenotype, Edge, Genotype
from nas_restore.replay import ReplayBuffer
from search_spaces import find_space


def tiny_genotype() -> Genotype:
    """A 1-frame TMICS network with 8 channels and one 2-node cell per branch (~7k parameters)."""
    config = find_space("tmics").config("demo", channels=8, frames=1, rain_kernels=4)
    cell = CellGenotype(nodes=[[Edge("Residualblocks_3_1", 0), Edge("skip_connect", 1)],
                               [Edge("DilConv_3_2", 2), Edge("skip_connect", 1)]], concat=[2, 3])
    return Genotype(space="tmics", cells={"dna": cell, "cna": cell}, macro={"alignment": "none"},
                    space_config=config.to_dict(), fusion={"type": "aas", "mode": "channel"}, metadata={})


def tiny_config(**kwargs) -> ContinualConfig:
    settings = dict(tasks=["light", "accumulation"], schemes=["finetune", "distill+replay", "joint"],
                    steps_per_task=2, batch_size=2, patch_size=16, train_items=4, test_items=2, test_size=16,
                    replay={"size": 4, "per_batch": 2}, device="cpu", progress=False)
    settings.update(kwargs)
    return ContinualConfig(**settings)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] + self.body(x[:, 0])


# ---------------------------------------------------------------- distillation


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_distillation_is_zero_with_zero_gradient_when_student_equals_teacher(loss):
    torch.manual_seed(0)
    student = Net()
    teacher = copy.deepcopy(student)
    config = DistillConfig(output_weight=1.0, feature_weight=0.5, feature_modules=["body.1"], loss=loss)
    distiller = Distiller(teacher, student, config)
    frames = torch.rand(2, 1, 3, 12, 12)
    total, parts = distiller(frames, student(frames))
    assert set(parts) == {"distill_output", "distill_features"}
    assert total.item() == 0.0
    total.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen

    # a different student is pulled back: non-zero loss and gradient on every parameter
    with torch.no_grad():
        student.body[0].weight.add_(0.1)
    student.zero_grad()
    total, _ = distiller(frames, student(frames))
    assert total.item() > 0
    total.backward()
    assert all(torch.count_nonzero(p.grad) > 0 for p in student.parameters())
    distiller.close()


def test_distillation_loss_detaches_the_teacher_and_names_bad_modules():
    pred = torch.rand(2, 3, 8, 8, requires_grad=True)
    teacher = torch.rand(2, 3, 8, 8, requires_grad=True)
    total, _ = distillation_loss(pred, teacher, DistillConfig())
    total.backward()
    assert pred.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match="body.9.*did you mean"):
        FeatureTap(Net(), ["body.9"])
    with pytest.raises(ValueError, match="feature_modules"):
        DistillConfig(feature_weight=1.0)


# ---------------------------------------------------------------- replay buffer


def labelled(n: int, value: float) -> TensorDataset:
    """n items (frames [1,3,2,2], target [3,2,2]) all filled with ``value`` (identifies the task)."""
    return TensorDataset(torch.full((n, 1, 3, 2, 2), value), torch.full((n, 3, 2, 2), value))


def test_quota_buffer_keeps_its_size_and_an_equal_share_per_task():
    buffer = ReplayBuffer(10, "quota", seed=1)
    buffer.add_task("a", labelled(50, 0.0))
    assert len(buffer) == 10 and buffer.task_counts() == {"a": 10}
    buffer.add_task("b", labelled(3, 1.0))  # a short task keeps all it has, never more than its quota
    assert buffer.task_counts() == {"a": 5, "b": 3}
    buffer.add_task("c", labelled(40, 2.0))
    assert len(buffer) <= 10 and buffer.task_counts() == {"a": 4, "b": 3, "c": 3}
    buffer.add_task("d", labelled(40, 3.0))
    assert buffer.task_counts() == {"a": 3, "b": 3, "c": 2, "d": 2}
    # stored tensors match their labels, and sampling mixes the tasks
    for frames, target, task in zip(buffer.frames, buffer.targets, buffer.tasks):
        assert frames.eq("abcd".index(task)).all() and target.eq("abcd".index(task)).all()
    frames, target, tasks = buffer.sample(400, torch.Generator().manual_seed(0))
    assert frames.shape == (400, 1, 3, 2, 2) and target.shape == (400, 3, 2, 2)
    assert set(tasks) == {"a", "b", "c", "d"}
    with pytest.raises(ValueError, match="already"):
        buffer.add_task("a", labelled(2, 0.0))


def test_reservoir_buffer_keeps_its_size_and_a_mix_proportional_to_task_size():
    counts = {"big": 0, "small": 0}
    for seed in range(20):
        buffer = ReplayBuffer(30, "reservoir", seed=seed)
        buffer.add_task("big", labelled(300, 0.0))
        buffer.add_task("small", labelled(100, 1.0))
        assert len(buffer) == 30
        for task, n in buffer.task_counts().items():
            counts[task] += n
    share = counts["small"] / (counts["big"] + counts["small"])
    assert abs(share - 0.25) < 0.05, share  # 100 of 400 items streamed


def test_buffer_state_round_trips_through_weights_only_load(tmp_path):
    buffer = ReplayBuffer(6, "reservoir", seed=3)
    buffer.add_task("a", labelled(10, 0.0))
    buffer.add_task("b", labelled(10, 1.0))
    torch.save(buffer.state_dict(), tmp_path / "replay.pt")
    again = ReplayBuffer(6, "reservoir", seed=99)
    again.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    assert again.task_counts() == buffer.task_counts() and again.seen == 20
    assert torch.equal(torch.stack(again.frames), torch.stack(buffer.frames))
    assert [t for t in again.sample(5)[2]] == [t for t in buffer.sample(5)[2]]  # same generator state
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(7, "reservoir").load_state_dict(buffer.state_dict())


# ---------------------------------------------------------------- accuracy-matrix metrics


def test_forgetting_and_backward_transfer_by_hand():
    nan = math.nan
    matrix = [[30.0, nan, nan], [28.0, 25.0, nan], [27.0, 26.0, 20.0]]
    assert average_final(matrix) == pytest.approx((27 + 26 + 20) / 3)
    assert forgetting(matrix) == pytest.approx(((30 - 27) + (25 - 26)) / 2)
    assert backward_transfer(matrix) == pytest.approx(((27 - 30) + (26 - 25)) / 2)
    assert math.isnan(forgetting([[30.0]]))


# ---------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("continual")
    stages = []
    result = run_continual(tiny_genotype(), tiny_config(), out, command="nas-restore continual test",
                           on_stage=lambda *args: stages.append(args))
    return out, result, stages


def test_two_task_run_writes_the_matrix_per_scheme_and_the_summary(tiny_run):
    out, result, stages = tiny_run
    assert result.stages_run == 6 and result.stages_skipped == 0 and result.stages_shared == 2
    assert [(s, k, t) for s, k, t, _, _ in stages] == [
        (s, k, t) for s in ("finetune", "distill+replay", "joint") for k, t in ((1, "light"), (2, "accumulation"))]
    for scheme in ("finetune", "distill+replay", "joint"):
        folder = out / scheme_slug(scheme)
        tasks, matrix = read_matrix_csv(folder / "matrix.csv")
        assert tasks == ["light", "accumulation"] and len(matrix) == 2
        assert math.isnan(matrix[0][1])                                  # not trained yet: blank
        assert all(math.isfinite(v) for v in (matrix[0][0], matrix[1][0], matrix[1][1]))
        assert (folder / "matrix.csv").read_text().splitlines()[1].endswith(",")
        _, ssim_matrix = read_matrix_csv(folder / "matrix_ssim.csv")
        assert 0 < ssim_matrix[1][1] <= 1 and math.isnan(ssim_matrix[0][1])
        assert (folder / "matrix.png").stat().st_size > 1000
        assert result.matrices[scheme]["psnr"][1][:2] == pytest.approx(matrix[1][:2], abs=1e-3)
    # stage 1 is the same training in every scheme: identical first rows
    firsts = {s: result.matrices[s]["psnr"][0][0] for s in result.matrices}
    assert len(set(firsts.values())) == 1
    # replay stored the first task after stage 1, both after stage 2
    row = json.loads((out / "distill_replay" / "02_accumulation" / "row.json").read_text())
    assert row["replay_counts"] == {"light": 2, "accumulation": 2} and "distill_output" in row["train"]
    summary = (out / "summary.md").read_text()
    for text in ("nas-restore continual test", "forgetting", "finetune", "distill+replay", "joint", "Machine:",
                 "seed 0"):
        assert text in summary
    data = json.loads((out / "summary.json").read_text())
    assert set(data["metrics"]) == {"finetune", "distill+replay", "joint"}
    assert math.isfinite(data["metrics"]["finetune"]["forgetting_db"])


def test_rerun_skips_finished_stages_and_resumes_a_missing_one(tiny_run):
    out, first, _ = tiny_run
    again = run_continual(tiny_genotype(), tiny_config(), out)
    assert again.stages_run == 0 and again.stages_skipped == 6
    assert again.matrices == first.matrices
    # lose the last stage of one scheme: only that stage is trained again, from the saved stage 1
    stage = out / "distill_replay" / "02_accumulation"
    (stage / "row.json").unlink()
    resumed = run_continual(tiny_genotype(), tiny_config(), out)
    assert resumed.stages_run == 1 and resumed.stages_skipped == 5
    for scheme in first.matrices:
        assert resumed.matrices[scheme]["psnr"][1][:2] == pytest.approx(first.matrices[scheme]["psnr"][1][:2])


def test_rerun_with_other_settings_is_refused(tiny_run):
    out, _, _ = tiny_run
    with pytest.raises(ConfigError, match="steps_per_task.*another --out"):
        run_continual(tiny_genotype(), tiny_config(steps_per_task=3), out)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown task 'drizzle'"):
        tiny_config(tasks=["light", "drizzle"])
    with pytest.raises(ValueError, match="unknown scheme"):
        tiny_config(schemes=["finetune", "ewc"])
    with pytest.raises(ValueError, match="more than once"):
        tiny_config(tasks=["light", "light"])


def test_cli_continual_runs_one_task_and_rejects_bad_flags(tmp_path, capsys):
    genotype = tiny_genotype().save(tmp_path / "g.json")
    config = tmp_path / "c.yaml"
    config.write_text("train_items: 2\ntest_items: 1\ntest_size: 16\nbatch_size: 2\n"
                      "distill: {feature_weight: 0.5, feature_modules: [dna_cells.0, fusion]}\n")
    out = tmp_path / "run"
    code = main(["continual", str(genotype), "--tasks", "heavy,light", "--schemes", "finetune,distill",
                 "--steps-per-task", "2", "--patch-size", "16", "--out", str(out), "--config", str(config),
                 "--device", "cpu", "--space-config", "channels=4"])
    text = capsys.readouterr().out
    assert code == 0 and "summary" in text and "distill after 2:light" in text
    row = json.loads((out / "distill" / "02_light" / "row.json").read_text())
    assert row["train"]["distill_features"] > 0 and row["train"]["distill_output"] > 0
    assert (out / "summary.md").is_file() and json.loads((out / "genotype.json").read_text())["space_config"][
        "channels"] == 4
    code = main(["continual", str(genotype), "--tasks", "heavy", "--out", str(tmp_path / "x"),
                 "--space-config", "chanels=4"])
    assert code == 2 and "chanels" in capsys.readouterr().err


def test_a_task_can_be_a_folder_of_pairs(tmp_path):
    from nas_restore.data.synthetic import write_synthetic_folder

    folder = write_synthetic_folder(tmp_path / "pairs", kind="images", count=5, size=24, rain_types=["heavy"], seed=2)
    config = tiny_config(tasks=["mine", "light"], schemes=["replay"], folders={"mine": str(folder)},
                         test_fraction=0.4)
    result = run_continual(tiny_genotype(), config, tmp_path / "run")
    psnr = result.matrices["replay"]["psnr"]
    assert math.isfinite(psnr[1][0]) and math.isfinite(psnr[1][1]) and math.isnan(psnr[0][1])
    assert "folder" in (tmp_path / "run" / "summary.md").read_text()
    with pytest.raises(ValueError, match="not in tasks"):
        tiny_config(folders={"other": str(folder)})
