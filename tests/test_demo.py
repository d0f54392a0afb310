"""The main job end to end, shrunk: every stage runs and the summary says where everything is."""

import json

import pytest

from nas_restore.demo import DemoConfig, run_demo

TINY = DemoConfig(search_epochs=1, search_items=8, search_patch=16, retrain_epochs=2, retrain_items=16,
                  retrain_patch=24, test_clips=1, test_frames=3, test_size=32, device="cpu", progress=False)


def test_tiny_demo_writes_every_artefact_and_a_summary(tmp_path):
    messages = []
    summary = run_demo(tmp_path, TINY, say=messages.append)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("psnr_input", "psnr_output", "ssim_input", "ssim_output", "genotype", "seconds"):
        assert key in on_disk
    assert on_disk == json.loads(json.dumps(summary))
    assert (tmp_path / "search" / "genotype.json").is_file()
    assert (tmp_path / f"retrain-{summary['genotype_id']}" / "model.pt").is_file()
    assert list((tmp_path / "render").glob("cell_dna.*")) and list((tmp_path / "outputs").rglob("*.png"))
    assert summary["count"] == 3  # one held-out clip of three frames
    assert [m[:5] for m in messages if m.startswith("[")] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]


@pytest.mark.slow
def test_default_demo_beats_the_rainy_input_by_a_clear_margin(tmp_path):
    summary = run_demo(tmp_path, DemoConfig(progress=False))
    assert summary["psnr_output"] >= summary["psnr_input"] + 1.0
