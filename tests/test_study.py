import json

import pytest

from nas_restore.study import (HeldOutConfig, changed_fields, held_out_test, read_json, refuse_changed_settings,
                               run_unit)


def test_a_unit_runs_once_is_skipped_when_done_and_retried_when_failed(tmp_path):
    said, calls = [], []
    folder = tmp_path / "unit"

    def boom():
        calls.append("boom")
        raise RuntimeError("no luck")

    row, worked = run_unit(folder, "[1/1] u", "[1/1] u: work", boom, {"status": "failed"}, str, said.append)
    assert worked and row == {"status": "failed", "error": "RuntimeError: no luck"}
    assert read_json(folder / "failed.json") == row and "no luck" in (folder / "error.log").read_text()
    row, worked = run_unit(folder, "[1/1] u", "[1/1] u: work", lambda: {"status": "done"}, {}, lambda r: "ok",
                           said.append)
    assert worked and row == {"status": "done"} and not (folder / "failed.json").exists()
    row, worked = run_unit(folder, "[1/1] u", "[1/1] u: work", boom, {}, str, said.append)
    assert not worked and row == {"status": "done"} and calls == ["boom"]
    assert said[-1] == "[1/1] u: finished earlier, skipped"


def test_changed_settings_are_named_in_the_refusal(tmp_path):
    previous, current = {"a": 1, "b": 2, "seeds": 3}, {"a": 1, "b": 5, "seeds": 4}
    assert changed_fields(previous, current, ignore=("seeds",)) == ["b"]
    assert changed_fields(previous, current, keys=("seeds", "b")) == ["seeds", "b"]
    refuse_changed_settings(tmp_path, "a study", [], "x", "y")
    with pytest.raises(ValueError, match=r"holds a study made with other settings \(b: not as in .*s.yaml\)"):
        refuse_changed_settings(tmp_path, "a study", ["b"], "its units would not compare", "seeds may change",
                                recorded_in=tmp_path / "s.yaml")


def test_the_held_out_clips_are_written_once_and_rewritten_when_their_settings_change(tmp_path):
    test = HeldOutConfig(clips=1, frames_per_clip=2, size=16)
    folder, record = held_out_test(test, tmp_path)
    assert sorted(record) == ["config", "count", "protocol", "psnr_input", "ssim_input"] and record["count"] == 2
    stamp = (tmp_path / "data" / "test.json").stat().st_mtime_ns
    assert held_out_test(test, tmp_path) == (folder, json.loads((tmp_path / "data" / "test.json").read_text()))
    assert (tmp_path / "data" / "test.json").stat().st_mtime_ns == stamp
    _, again = held_out_test(HeldOutConfig(clips=1, frames_per_clip=3, size=16), tmp_path)
    assert again["count"] == 3
