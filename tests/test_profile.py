"""`nas-restore profile` and the figures behind it: cost, speed per precision, peak memory, the conv peak.

Timings are printed, never asserted (they depend on the machine's load): only that they are finite,
positive and consistent with each other.
"""

import json
import math

import pytest
import torch

from nas_restore.build import build_model
from nas_restore.cli import main
from nas_restore.profiling import (CPU_MEMORY_METHOD, conv_flops, conv_peak, count_flops, count_parameters,
                                   peak_forward_memory, profile_network)
from nas_restore.precision import resolve_precision
from nas_restore.sources import load_genotype


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_profile_json_has_one_row_per_precision_with_consistent_figures(capsys):
    code, out, _ = run(capsys, "profile", "rescnn", "--size", "32x48", "--precision", "fp32,bf16", "--json",
                       "--repeats", "2", "--warmup", "1", "--device", "cpu")
    assert code == 0
    report = json.loads(out)  # stdout is one JSON object
    assert [r["precision"] for r in report["rows"]] == ["fp32", "bf16"]
    assert report["device"] == "cpu" and report["threads"] >= 1 and report["cpu"]
    assert (report["height"], report["width"], report["frames"]) == (32, 48, 3)
    params = count_parameters(build_model(load_genotype("rescnn")))
    for row in report["rows"]:
        for key in ("seconds_per_frame", "fps", "gflops", "peak_memory_bytes", "flops", "macs",
                    "conv_peak_gflops", "fraction_of_peak"):
            assert positive(row[key]), (key, row[key])
        assert row["macs"] * 2 == row["flops"]
        assert row["params"] == params
        assert row["shape"] == [1, 3, 3, 32, 48]
        assert row["fps"] == pytest.approx(1 / row["seconds_per_frame"])
        assert row["gflops"] == pytest.approx(row["flops"] / row["seconds_per_frame"] / 1e9)
        assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / report["conv_peak"][row["precision"]]["gflops"])
        assert row["memory_method"] == CPU_MEMORY_METHOD
    assert report["rows"][0]["flops"] == report["rows"][1]["flops"]  # FLOPs do not depend on the precision
    assert report["rows"][1]["memory_format"] == "channels_last"


def test_profile_table_and_frames_override(capsys):
    code, out, _ = run(capsys, "profile", "rescnn", "--size", "16x24", "--frames", "5", "--precision", "fp32",
                       "--repeats", "1", "--warmup", "0", "--no-peak", "--device", "cpu")
    assert code == 0
    assert "T=5" in out and "1x5x3x16x24" in out and "frames/s" in out and "fp32" in out


@pytest.mark.parametrize("argv, message", [
    (["--size", "32"], "--size expects HxW"),
    (["--size", "0x48"], "--size expects HxW"),
    (["--size", "axb"], "--size expects HxW"),
    (["--precision", "fp32,fp64"], "unknown precision 'fp64'"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 is for GPUs"),
    (["--frames", "2"], "frames must be odd"),
    (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_profile_bad_input_is_one_clear_error(capsys, argv, message):
    code, out, err = run(capsys, "profile", "rescnn", "--no-peak", *argv)
    assert code == 2 and not out
    assert err.startswith("error: ") and message in err


def test_conv_peak_counts_what_the_flop_counter_counts():
    conv = torch.nn.Conv2d(96, 96, 3, padding=1, bias=False)
    assert count_flops(conv, (1, 96, 12, 16)) == conv_flops(96, 96, 3, 12, 16)
    for precision in ("fp32", "bf16"):
        peak = conv_peak(precision, "cpu", shape=(1, 96, 12, 16), repeats=1, warmup=0)
        assert peak.precision == precision and peak.flops == conv_flops(96, 96, 3, 12, 16)
        assert positive(peak.gflops) and positive(peak.seconds)
        assert peak.memory_format == ("NCHW" if precision == "fp32" else "channels_last")


def test_cpu_peak_memory_sees_the_tensors_of_the_pass():
    size = 4 * 2**20
    held = []

    def allocate():
        held.append(torch.empty(size, dtype=torch.uint8))
        del held[:]

    peak, method = peak_forward_memory(allocate, "cpu")
    assert method == CPU_MEMORY_METHOD and peak >= size


def test_profile_network_resolves_auto_and_drops_duplicates():
    model = build_model(load_genotype("rescnn"))
    rows = profile_network(model, (1, 3, 3, 8, 8), ["fp32", "auto", "bf16", "fp32"], "cpu", repeats=1, warmup=0)
    auto = resolve_precision("auto", "cpu").name
    assert [r.precision for r in rows] == list(dict.fromkeys(["fp32", auto, "bf16"]))
    assert all(r.fraction_of_peak is None for r in rows)  # no peaks given
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # bf16 ran on its own channels_last copy
