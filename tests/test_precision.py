"""One precision setting: bf16 where the hardware has it, losses/metrics/weights fp32, clear errors elsewhere."""

import csv
import json

import pytest
import torch
from torch import nn

from nas_restore import precision as P
from nas_restore.build import build_model, load_trained
from nas_restore.config import ConfigError
from nas_restore.training import RetrainConfig, RestorationModule, retrain
from tests._tiny_model import tiny_genotype, write_model
from tests.test_training import TinyNet, make_pairs, quiet_trainer


def test_resolve_names_and_refusals():
    fp32 = P.resolve_precision("fp32", "cpu")
    assert not fp32.mixed and fp32.lightning == "32-true" and not fp32.channels_last
    bf16 = P.resolve_precision("BF16", "cpu")
    assert bf16.dtype == torch.bfloat16 and bf16.lightning == "bf16-mixed" and bf16.channels_last
    for bad, match in (("fp8", "unknown precision 'fp8'"), ("fp16", "fp16 is for GPUs")):
        with pytest.raises(ConfigError, match=match):
            P.resolve_precision(bad, "cpu")


@pytest.mark.parametrize("fast", [True, False])
def test_auto_follows_the_cpu(monkeypatch, fast):
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: fast)
    assert P.resolve_precision("auto", "cpu").name == ("bf16" if fast else "fp32")


@pytest.mark.parametrize("bf16_ok, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_and_tf32(monkeypatch, bf16_ok, expected):
    """The CUDA branch, as far as a CPU can check it: the choice, the Lightning flag, TF32 turned on."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        chosen = P.resolve_precision("auto", "cuda")
        assert chosen.name == expected and chosen.device_type == "cuda"
        assert chosen.lightning == {"bf16": "bf16-mixed", "fp16": "16-mixed"}[expected]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_wrapped_model_runs_in_bf16_and_returns_fp32():
    torch.manual_seed(0)
    model = build_model(tiny_genotype(frames=3)).eval()
    x = torch.rand(1, 3, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        seen = []
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        hook = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        out = P.resolve_precision("bf16", "cpu").wrap(model)(x)
        hook.remove()
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert conv.weight.dtype == torch.float32 and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert (out - reference).abs().max() < 0.05  # bf16 keeps 8 bits of mantissa: close, not equal
    assert P.resolve_precision("fp32", "cpu").wrap(model) is model


def test_bf16_training_keeps_losses_and_saved_weights_fp32(tmp_path):
    torch.manual_seed(0)
    net = TinyNet()
    conv_dtypes, loss_dtypes = [], []
    net.conv1.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    module = RestorationModule(net)
    original = module.criterion.forward

    def criterion(pred, target, *args, **kwargs):
        loss, parts = original(pred, target, *args, **kwargs)
        loss_dtypes.append((pred.dtype, loss.dtype))
        return loss, parts

    module.criterion.forward = criterion
    trainer = quiet_trainer(max_epochs=1, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(module, torch.utils.data.DataLoader(make_pairs(8), batch_size=4))
    assert torch.bfloat16 in conv_dtypes
    assert loss_dtypes and all(p == torch.float32 and l == torch.float32 for p, l in loss_dtypes)
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # on_fit_start's layout

    result = retrain(TinyNet(), make_pairs(16), make_pairs(8, seed=1),
                     RetrainConfig(epochs=3, batch_size=4, lr=5e-3, device="cpu", progress=False,
                                   precision="bf16"), tmp_path / "run")
    assert result.precision == "bf16"
    blob = torch.load(result.model_path, weights_only=True)
    assert blob["precision"] == "bf16"
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in blob["state_dict"].values())
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert losses[-1] < losses[0]  # the training loss falls in bf16 too


def test_derain_and_evaluate_take_the_precision(tmp_path, capsys):
    from nas_restore.cli import main
    from nas_restore.data.synthetic import write_synthetic_folder

    model_path = write_model(tmp_path / "m", frames=3)
    data = write_synthetic_folder(tmp_path / "clips", kind="video", count=1, frames_per_clip=3, size=32, seed=3)
    scores = {}
    for precision in ("fp32", "bf16"):
        assert main(["evaluate", str(model_path), "--data", str(data), "--device", "cpu", "--precision", precision,
                     "--json", "--no-progress"]) == 0
        scores[precision] = json.loads(capsys.readouterr().out)["psnr"]
    assert abs(scores["bf16"] - scores["fp32"]) < 0.5
    model, _ = load_trained(model_path)
    assert next(model.parameters()).dtype == torch.float32
    assert main(["derain", str(model_path), str(data / "input" / "clip_001"), "--out", str(tmp_path / "out"),
                 "--precision", "fp16", "--device", "cpu", "--no-progress"]) == 2
    assert "fp16 is for GPUs" in capsys.readouterr().err


def test_a_one_shot_search_runs_its_supernet_in_bf16(tmp_path):
    from nas_restore.datasets import DataConfig
    from nas_restore.search import SearchConfig, run_search
    from tests.test_search import TINY_SPACE

    config = SearchConfig(preset="demo", space_settings=TINY_SPACE, epochs=2, batch_size=4, precision="bf16",
                          strategy_options={"arc_learning_rate": 3e-2},
                          data=DataConfig(patch_size=16, train_items=8, val_items=8), device="cpu", progress=False)
    result = run_search(config, tmp_path / "run")
    assert result.genotype.metadata["precision"] == "bf16"
    import pandas as pd

    alphas = pd.read_csv(tmp_path / "run" / "alphas.csv")
    first, last = (alphas[alphas["step"] == s].set_index(["label", "choice"])["weight"]
                   for s in (alphas["step"].min(), alphas["step"].max()))
    assert (first - last).abs().max() > 1e-4  # the architecture weights moved under bf16
    build_model(result.genotype)
