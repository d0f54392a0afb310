"""`export`: the exported program runs without NNI and matches the model; model.pt loads weights_only."""
import subprocess
import sys
import textwrap

import torch

from nas_restore.build import load_trained
from nas_restore.cli import main
from nas_restore.export import export_model, load_exported
from tests._tiny_model import write_model


def test_model_pt_loads_with_weights_only(tmp_path):
    path = write_model(tmp_path)
    blob = torch.load(path, weights_only=True)
    assert {"state_dict", "genotype", "format"} <= set(blob)
    model, genotype = load_trained(path)
    assert genotype.space_config["frames"] == 3 and not model.training


def test_export_runs_without_nni_and_matches_the_model(tmp_path, capsys):
    path = write_model(tmp_path)
    out = tmp_path / "model.pt2"
    assert main(["export", str(path), "--out", str(out), "--height", "32", "--width", "32"]) == 0
    assert "torch.export" in capsys.readouterr().out
    model, _ = load_trained(path)
    x = torch.rand(1, 3, 3, 40, 56)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "y.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["nni"] = None            # any import of NNI now fails
        sys.modules["nas_restore"] = None    # nor is the toolkit needed
        import torch
        program = torch.export.load({str(out)!r}).module()
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        y = torch.load({str(tmp_path / 'y.pt')!r}, weights_only=True)
        err = (program(x) - y).abs().max().item()
        assert err < 1e-4, err
        print("ok", err)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")


class NumpyInside(torch.nn.Module):
    """Computes part of its forward in numpy: a trace would freeze that part as a constant."""

    def forward(self, x):
        shift = torch.from_numpy(x[:, 0].detach().numpy().mean(axis=(1, 2, 3), keepdims=True))
        return x[:, 0] - shift


def test_export_refuses_a_network_it_cannot_capture(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="cannot be exported"):
        export_model(NumpyInside(), 1, tmp_path / "bad.pt2", 16, 16)
    assert not (tmp_path / "bad.pt2").exists()


def test_load_exported_reads_a_trace_fallback(tmp_path):
    net = torch.nn.Conv2d(3, 3, 3, padding=1)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x[:, 0])

    traced = torch.jit.trace(Wrap().eval(), torch.rand(1, 1, 3, 8, 8))
    torch.jit.save(traced, str(tmp_path / "t.pt"))
    x = torch.rand(1, 1, 3, 12, 12)
    assert torch.allclose(load_exported(tmp_path / "t.pt")(x), Wrap()(x))
