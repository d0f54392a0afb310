"""Folder evaluation: input row, a model's row, saved outputs and results files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from nas_restore.data.synthetic import write_synthetic_folder
from nas_restore.evaluation import EvaluationResult, evaluate_folder
from nas_restore.metrics import Protocol, psnr


class CentreFrame(nn.Module):
    """Identity-like 'derainer': returns the centre input frame."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[:, frames.shape[1] // 2] * self.scale


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_synthetic_folder(tmp_path_factory.mktemp("eval") / "imgs", kind="images", count=3, size=24,
                                  rain_types=["heavy"], seed=2)


def test_input_row_without_model(image_folder):
    result = evaluate_folder(image_folder, progress=False)
    assert set(result.summary) == {"psnr", "ssim", "count", "protocol"}
    assert result.summary["count"] == 3 and list(result.per_item.columns) == ["name", "psnr", "ssim"]
    assert result.summary["protocol"] == Protocol().describe()
    assert 5 < result.summary["psnr"] < 40 and 0 < result.summary["ssim"] < 1
    assert result.summary["psnr"] == pytest.approx(result.per_item["psnr"].mean())
    rgb = evaluate_folder(image_folder, protocol=Protocol(y_channel=False), progress=False)
    assert rgb.summary["psnr"] != pytest.approx(result.summary["psnr"])


def test_identity_model_scores_like_the_input(image_folder, tmp_path):
    model = CentreFrame().train()
    result = evaluate_folder(image_folder, model, frames=3, save_outputs=tmp_path / "out", progress=False)
    s = result.summary
    assert {"psnr", "ssim", "psnr_input", "ssim_input", "count", "protocol"} <= set(s)
    assert s["psnr"] == pytest.approx(s["psnr_input"]) and s["ssim"] == pytest.approx(s["ssim_input"])
    assert list(result.per_item.columns) == ["name", "psnr", "ssim", "psnr_input", "ssim_input"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001.png", "0002.png", "0003.png"]
    assert model.training                                     # mode restored


def test_a_better_model_scores_higher(image_folder):
    from nas_restore.data.folders import PairedImageFolder

    ds = PairedImageFolder(image_folder)
    targets = {i: ds[i][1] for i in range(len(ds))}
    calls = []

    def oracle(frames: torch.Tensor) -> torch.Tensor:
        calls.append(frames.shape)
        return targets[len(calls) - 1].unsqueeze(0)

    s = evaluate_folder(image_folder, oracle, progress=False).summary
    assert calls[0] == (1, 1, 3, 24, 24)
    assert s["psnr"] == float("inf") and s["psnr"] > s["psnr_input"] and s["ssim"] == pytest.approx(1.0)


def test_video_folder_and_saved_outputs(tmp_path):
    root = write_synthetic_folder(tmp_path / "vid", kind="video", count=2, frames_per_clip=3, size=16, seed=1)
    result = evaluate_folder(root, CentreFrame(), frames=3, save_outputs=tmp_path / "out", progress=False)
    assert result.summary["count"] == 6
    assert result.per_item["name"].tolist()[:2] == ["clip_001/00001", "clip_001/00002"]
    assert (tmp_path / "out" / "clip_002" / "00003.png").is_file()
    first = result.per_item.iloc[0]
    assert first["psnr"] == pytest.approx(first["psnr_input"])


def test_wrong_model_output_is_a_clear_error(image_folder):
    with pytest.raises(ValueError, match=r"expected \[1, 3, H, W\]"):
        evaluate_folder(image_folder, lambda x: x, progress=False)


def test_save_and_json(image_folder, tmp_path):
    result = evaluate_folder(image_folder, progress=False)
    out = result.save(tmp_path / "res")
    table = pd.read_csv(out / "per_item.csv")
    assert len(table) == 3 and table["psnr"].tolist() == pytest.approx(result.per_item["psnr"].tolist())
    assert json.loads((out / "summary.json").read_text())["count"] == 3
    doc = json.loads(result.to_json())
    assert doc["summary"]["protocol"] == result.summary["protocol"] and len(doc["per_item"]) == 3
    perfect = EvaluationResult(per_item=pd.DataFrame([{"name": "a", "psnr": float("inf"), "ssim": 1.0}]),
                               summary={"psnr": float("inf"), "ssim": 1.0, "count": 1, "protocol": "x"})
    assert json.loads(perfect.to_json())["summary"]["psnr"] == "inf"


def test_identity_psnr_matches_metric_directly(image_folder):
    from nas_restore.data.folders import PairedImageFolder

    ds = PairedImageFolder(image_folder)
    frames, target = ds[1]
    row = evaluate_folder(image_folder, progress=False).per_item.iloc[1]
    assert row["name"] == "0002" and row["psnr"] == pytest.approx(psnr(frames[0], target))


def test_score_pair_is_the_metrics_protocol_on_one_item():
    import torch

    from nas_restore.evaluation import score_pair
    from nas_restore.metrics import psnr, ssim

    target = torch.rand(3, 24, 24)
    output = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    assert score_pair(output, target) == (psnr(output, target), ssim(output, target))
    assert score_pair(target, target)[0] == float("inf")
