"""`evaluate` with a model: the identity gives exactly the input row; video gets the warping error."""
import json
import math

import pytest
import torch
from torch import nn

from nas_restore.cli import main
from nas_restore.data.synthetic import write_synthetic_folder
from nas_restore.evaluation import evaluate_folder
from tests._tiny_model import write_model


class CentreFrame(nn.Module):
    def forward(self, x):
        return x[:, x.shape[1] // 2]


@pytest.mark.parametrize("kind", ["images", "video"])
def test_identity_model_gives_exactly_the_input_row(tmp_path, kind):
    root = write_synthetic_folder(tmp_path / kind, kind=kind, count=2, frames_per_clip=3, size=24, seed=0)
    with_model = evaluate_folder(root, CentreFrame(), frames=3, progress=False)
    without = evaluate_folder(root, progress=False)
    s = with_model.summary
    assert s["psnr"] == s["psnr_input"] == without.summary["psnr"]
    assert s["ssim"] == s["ssim_input"] == without.summary["ssim"]
    assert (with_model.per_item["psnr"] == with_model.per_item["psnr_input"]).all()
    if kind == "video":
        assert s["warp_error"] == s["warp_error_input"] == without.summary["warp_error"]
        assert 0 <= s["warp_error_clean"] < s["warp_error_input"]
        first = with_model.per_item.groupby(with_model.per_item["name"].str.split("/").str[0]).head(1)
        assert first["warp_error"].isna().all() and len(first) == 2  # a clip's first frame has no previous one
        assert "Lai et al." in s["temporal_measure"]
    else:
        assert "warp_error" not in s


def test_evaluate_cli_writes_csv_json_and_outputs(tmp_path, capsys):
    root = write_synthetic_folder(tmp_path / "clips", kind="video", count=1, frames_per_clip=3, size=24, seed=1)
    model = write_model(tmp_path / "run")
    assert main(["evaluate", str(model), "--data", str(root), "--json", "--out", str(tmp_path / "ev"),
                 "--save-outputs", str(tmp_path / "outs"), "--tile", "16", "--tile-overlap", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 3 and {"psnr_input", "warp_error", "warp_error_input"} <= set(summary)
    assert (tmp_path / "ev" / "per_item.csv").read_text().splitlines()[0].startswith("name,psnr,ssim,psnr_input")
    assert len(list((tmp_path / "outs").rglob("*.png"))) == 3
    assert main(["evaluate", "--data", str(root), "--no-progress"]) == 0
    assert "warping error" in capsys.readouterr().out
    assert not math.isnan(summary["warp_error"])
