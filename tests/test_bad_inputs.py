"""A catalogue of bad inputs across the commands, each tried through the CLI as a user would.

Every case must end in exit 2 with an ``error:`` message that names the problem (the listed words), no
traceback, no file changed outside the case's own output folder, and no code run from a data file.
The catalogue is the issue's list of kinds (tracebacks, unclear errors, silent wrong results, lost data,
code from data) plus the neighbours a careless or hostile user would try next.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from skimage import io

from nas_restore import cli
from nas_restore.build import build_model, save_weights
from search_spaces import find_space
from tests._tiny_model import tiny_genotype, write_model

PWNED = "PWNED"  # the file a hostile space file writes when it is imported


def _image(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    return (rng.random((size, size, 3)) * 255).astype(np.uint8)


def _build_world(root: Path) -> None:
    """Everything the cases point at: image pairs with a holdout split, clips, models, genotypes, run folders."""
    rng = np.random.default_rng(0)
    for side in ("input", "target"):
        (root / "data" / side).mkdir(parents=True)
        for i in range(1, 5):
            io.imsave(root / "data" / side / f"{i}.png", _image(rng), check_contrast=False)
    (root / "data" / "SPLITS.txt").write_text("fit: 1 2 3\nholdout: 4\n")
    for side in ("input", "target"):
        for clip in ("c1", "c2"):
            (root / "clips" / side / clip).mkdir(parents=True)
            for t in range(5):
                io.imsave(root / "clips" / side / clip / f"{t:03d}.png", _image(rng), check_contrast=False)
    write_model(root / "model")  # a 3-frame TMICS network
    rescnn = find_space("rescnn")
    image_genotype = rescnn.to_genotype({}, rescnn.config(channels=4, blocks=1, frames=1), {"name": "tiny-rescnn"})
    (root / "img_model").mkdir()
    save_weights(build_model(image_genotype), root / "img_model" / "model.pt", genotype=image_genotype.to_dict())
    image_genotype.save(root / "genotype.json")
    tiny_genotype().save(root / "video_genotype.json")
    search = root / "search_run"
    image_genotype.save(search / "genotype.json")
    (search / "alphas.csv").write_text("epoch,choice,candidate,weight\n1,cell/op_2_0,conv,0.5\n")
    (search / "config.yaml").write_text("space: rescnn\n")
    (search / "metrics.csv").write_text("epoch,val_psnr\n1,20.0\n")
    retrained = root / "retrain_run"
    (retrained / "checkpoints").mkdir(parents=True)
    shutil.copy(root / "img_model" / "model.pt", retrained / "model.pt")
    image_genotype.save(retrained / "genotype.json")
    (retrained / "config.yaml").write_text("train: {epochs: 1}\n")
    (retrained / "metrics.csv").write_text("epoch,val_psnr\n1,20.0\n")
    (root / "evil.py").write_text(f"from pathlib import Path\nPath({str(root / PWNED)!r}).write_text('ran')\n"
                                  "class Space: pass\n")
    (root / "notes.txt").write_text("just some notes\n")
    # small settings, so that a case that wrongly passes its check still ends in seconds
    (root / "tiny_retrain.yaml").write_text(yaml.safe_dump(
        {"train": {"epochs": 1, "batch_size": 2, "progress": False, "device": "cpu"},
         "data": {"train_items": 4, "val_items": 2, "patch_size": 16}}))
    (root / "tiny_search.yaml").write_text(yaml.safe_dump(
        {"space": "rescnn", "epochs": 1, "batch_size": 2, "progress": False, "device": "cpu", "max_trials": 1,
         "data": {"train_items": 4, "val_items": 2, "patch_size": 16}}))


@pytest.fixture(scope="module")
def world_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "w"
    root.mkdir()
    _build_world(root)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# set-ups: each writes the bad input into the world (W) and returns nothing


def _write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        path = w / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = (w / rel).read_bytes()
        (w / rel).write_bytes(data[:int(len(data) * keep)])
    return setup


def _yaml(rel: str, base: str, section: str | None, **changes) -> Callable[[Path], None]:
    """A copy of a tiny config with ``changes`` (under ``section``, or top level) written raw into YAML."""
    def setup(w: Path) -> None:
        text = (w / base).read_text()
        extra = "".join(f"  {k}: {v}\n" if section else f"{k}: {v}\n" for k, v in changes.items())
        data = yaml.safe_load(text)
        for k in changes:
            (data[section] if section else data).pop(k, None)
        body = yaml.safe_dump(data)
        if section:
            body = body.replace(f"{section}:\n", f"{section}:\n{extra}", 1)
        else:
            body += extra
        (w / rel).write_text(body)
    return setup


def _genotype(rel: str, change: Callable[[dict], None], source: str = "genotype.json") -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = json.loads((w / source).read_text())
        change(data)
        (w / rel).write_text(json.dumps(data))
    return setup


def _model_genotype(rel: str, change: Callable[[dict], None], digests: bool = True) -> Callable[[Path], None]:
    """A model.pt whose stored genotype is edited after training (the weights stay as they were); without
    ``digests``, a file of the kind written before fingerprints were stored."""
    def setup(w: Path) -> None:
        blob = torch.load(w / "model" / "model.pt", weights_only=True)
        change(blob["genotype"])
        if not digests:
            blob.pop("genotype_digest", None)
            blob.pop("layout_digest", None)
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, w / rel)
    return setup


def _pickle_model(w: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {w / PWNED}",))
    torch.save({"state_dict": {}, "genotype": {}, "payload": Evil()}, w / "evil.pt")


def _deep_json(w: Path) -> None:
    (w / "deep.json").write_text('{"space": "rescnn", "cells": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _huge_json(w: Path) -> None:
    (w / "huge.json").write_text('{"space": "rescnn", "cells": {}, "metadata": {"x": "' + "a" * (5 << 20) + '"}}')


def _set(path: str, value) -> Callable[[dict], None]:
    keys = path.split(".")

    def change(data: dict) -> None:
        node = data
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return change


def _video_edge_input(data: dict) -> None:  # same weight shapes, another network
    data["cells"]["dna"]["nodes"][1][1]["input"] = 0


def _dangling(data: dict) -> None:
    data["cells"]["dna"]["nodes"][0][0]["input"] = 7


def _unknown_op(data: dict) -> None:
    data["cells"]["dna"]["nodes"][0][0]["op"] = "MagicConv_9"


def _many_nodes(data: dict) -> None:
    data["cells"]["dna"]["nodes"] = [[{"op": "skip_connect", "input": 0}]] * 100_000


def _lock_by_parent(w: Path) -> None:
    (w / "busy").mkdir()
    (w / "busy" / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename,
                                                  "command": "nas-restore retrain", "since": "earlier"}))


def _darts(text: str, rel: str = "darts.txt") -> Callable[[Path], None]:
    return _write(rel, text)


# --------------------------------------------------------------------------------------------------
# the catalogue


@dataclass
class Case:
    id: str
    argv: list[str]                       # "{w}" is the world folder
    expect: tuple[str, ...]               # words the message must hold (case-insensitive)
    setup: Callable[[Path], None] | None = None
    may_change: tuple[str, ...] = ("out",)  # world paths the command may write (its own output)
    kind: str = "traceback"               # the kind: traceback, unclear, silent, lost, code, other


R = ["--config", "{w}/tiny_retrain.yaml", "--no-progress", "--device", "cpu"]
S = ["--config", "{w}/tiny_search.yaml", "--no-progress", "--device", "cpu"]
GOOD_DARTS = "Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2])"

CASES = [
    # --- model files where a model is expected ------------------------------------------------------
    Case("model-zero-bytes", ["evaluate", "{w}/bad.pt", "--data", "{w}/data"], ("bad.pt", "retrain"),
         _write("bad.pt", b"")),
    Case("model-truncated", ["derain", "{w}/model/model.pt", "{w}/clips/input/c1", "--out", "{w}/out"],
         ("model.pt", "retrain"), _truncate("model/model.pt")),
    Case("model-text", ["export", "{w}/notes.txt", "--out", "{w}/out/m.pt2"], ("notes.txt",)),
    Case("model-random-bytes", ["evaluate", "{w}/bad.pt", "--data", "{w}/data"], ("bad.pt",),
         _write("bad.pt", bytes(range(256)) * 8)),
    Case("model-is-genotype-json", ["evaluate", "{w}/genotype.json", "--data", "{w}/data"],
         ("genotype", "retrain")),
    Case("model-folder-without-model", ["derain", "{w}/clips", "{w}/clips/input/c1", "--out", "{w}/out"],
         ("model.pt",)),
    Case("model-missing", ["evaluate", "{w}/nothing.pt", "--data", "{w}/data"], ("does not exist",)),
    Case("model-pickle-payload", ["evaluate", "{w}/evil.pt", "--data", "{w}/data"], ("evil.pt",), _pickle_model,
         kind="code"),
    Case("model-genotype-edited-same-shapes", ["evaluate", "{w}/edited/model.pt", "--data", "{w}/clips"],
         ("genotype",), _model_genotype("edited/model.pt", _video_edge_input), kind="silent"),
    Case("model-genotype-edited-shapes", ["evaluate", "{w}/edited/model.pt", "--data", "{w}/clips"],
         ("model.pt",), _model_genotype("edited/model.pt", _set("space_config.channels", 12))),
    Case("model-genotype-space-file", ["evaluate", "{w}/edited/model.pt", "--data", "{w}/clips"],
         ("genotype", "changed after training"), _model_genotype("edited/model.pt", _set("space", "evil.py:Space")),
         kind="code"),
    Case("model-unverified-space-file", ["evaluate", "{w}/edited/model.pt", "--data", "{w}/clips"],
         ("python file", "--space"), _model_genotype("edited/model.pt", _set("space", "evil.py:Space"), digests=False),
         kind="code"),
    Case("model-genotype-not-a-genotype", ["evaluate", "{w}/edited/model.pt", "--data", "{w}/clips"],
         ("genotype",), _model_genotype("edited/model.pt", _set("cells", "nope"))),
    # --- --frames against the model ---------------------------------------------------------------------
    Case("frames-5-for-3-frame-model", ["evaluate", "{w}/model/model.pt", "--data", "{w}/clips", "--frames", "5"],
         ("3", "5", "frames")),
    Case("frames-1-for-3-frame-model", ["evaluate", "{w}/model/model.pt", "--data", "{w}/clips", "--frames", "1"],
         ("3", "1", "frames")),
    Case("frames-even", ["evaluate", "{w}/model/model.pt", "--data", "{w}/clips", "--frames", "4"], ("frames",)),
    Case("frames-zero", ["evaluate", "{w}/model/model.pt", "--data", "{w}/clips", "--frames", "0"], ("frames",)),
    # --- output paths ---------------------------------------------------------------------------------------
    Case("export-height-zero", ["export", "{w}/model/model.pt", "--out", "{w}/out/m.pt2", "--height", "0"],
         ("--height",)),
    Case("export-width-negative", ["export", "{w}/model/model.pt", "--out", "{w}/out/m.pt2", "--width", "-5"],
         ("--width",)),
    Case("export-out-is-folder", ["export", "{w}/model/model.pt", "--out", "{w}/data"], ("data", "file")),
    Case("export-out-under-a-file", ["export", "{w}/model/model.pt", "--out", "{w}/notes.txt/m.pt2"],
         ("notes.txt",)),
    Case("retrain-out-is-file", ["retrain", "{w}/genotype.json", "--out", "{w}/notes.txt", *R], ("notes.txt",)),
    Case("retrain-out-under-file", ["retrain", "{w}/genotype.json", "--out", "{w}/notes.txt/run", *R],
         ("notes.txt",)),
    Case("search-out-is-file", ["search", "--out", "{w}/notes.txt", *S], ("notes.txt",)),
    Case("derain-out-is-file", ["derain", "{w}/img_model/model.pt", "{w}/data/input", "--out", "{w}/notes.txt"],
         ("notes.txt",)),
    Case("evaluate-out-is-file", ["evaluate", "{w}/img_model/model.pt", "--data", "{w}/data", "--out",
                                  "{w}/notes.txt"], ("notes.txt",)),
    # --- lost data: outputs into inputs, run folders of another kind, busy folders ---------------------------
    Case("save-outputs-into-inputs", ["evaluate", "{w}/img_model/model.pt", "--data", "{w}/data",
                                      "--save-outputs", "{w}/data/input"], ("data/input",), kind="lost"),
    Case("save-outputs-into-targets", ["evaluate", "{w}/img_model/model.pt", "--data", "{w}/data",
                                       "--save-outputs", "{w}/data/target"], ("data/target",), kind="lost"),
    Case("save-outputs-inside-targets", ["evaluate", "{w}/img_model/model.pt", "--data", "{w}/data",
                                         "--save-outputs", "{w}/data/target/sub"], ("data/target",), kind="lost"),
    Case("evaluate-out-into-targets", ["evaluate", "{w}/img_model/model.pt", "--data", "{w}/data",
                                       "--out", "{w}/data/target"], ("data/target",), kind="lost"),
    Case("derain-out-is-input", ["derain", "{w}/img_model/model.pt", "{w}/data/input", "--out", "{w}/data/input"],
         ("data/input",), kind="lost"),
    Case("derain-image-out-is-its-folder", ["derain", "{w}/img_model/model.pt", "{w}/data/input/1.png",
                                            "--out", "{w}/data/input"], ("data/input",), kind="lost"),
    Case("retrain-into-search-run", ["retrain", "{w}/genotype.json", "--out", "{w}/search_run", *R],
         ("search_run", "search"), kind="lost"),
    Case("search-into-retrain-run", ["search", "--out", "{w}/retrain_run", *S], ("retrain_run",), kind="lost"),
    Case("retrain-into-busy-folder", ["retrain", "{w}/genotype.json", "--out", "{w}/busy", *R], ("busy", "pid"),
         _lock_by_parent, kind="lost"),
    Case("retrain-truncated-last-ckpt", ["retrain", "{w}/genotype.json", "--out", "{w}/half", *R], ("last.ckpt",),
         _write("half/checkpoints/last.ckpt", b"PK\x03\x04 half a zip"), may_change=("half",)),
    # --- genotype files where a genotype is expected -------------------------------------------------------
    Case("genotype-missing", ["retrain", "{w}/nothing.json", "--out", "{w}/out", *R], ("nothing.json",)),
    Case("genotype-is-model", ["retrain", "{w}/model/model.pt", "--out", "{w}/out", *R], ("genotype",)),
    Case("genotype-empty-file", ["inspect", "{w}/empty.json"], ("empty.json",), _write("empty.json", "")),
    Case("genotype-invalid-json", ["inspect", "{w}/bad.json"], ("bad.json", "json"), _write("bad.json", '{"space": ')),
    Case("genotype-json-list", ["inspect", "{w}/list.json"], ("object",), _write("list.json", "[1, 2]")),
    Case("genotype-deep-json", ["inspect", "{w}/deep.json"], ("deep",), _deep_json),
    Case("genotype-huge-json", ["render", "{w}/huge.json", "--out", "{w}/out"], ("mib",), _huge_json),
    Case("genotype-unknown-op", ["retrain", "{w}/g.json", "--out", "{w}/out", *R], ("magicconv_9",),
         _genotype("g.json", _unknown_op, "video_genotype.json")),
    Case("genotype-dangling-input", ["inspect", "{w}/g.json"], ("input is 7",),
         _genotype("g.json", _dangling, "video_genotype.json")),
    Case("genotype-100k-nodes", ["inspect", "{w}/g.json"], ("nodes", "at most"),
         _genotype("g.json", _many_nodes, "video_genotype.json")),
    Case("genotype-channels-huge", ["retrain", "{w}/g.json", "--out", "{w}/out", *R], ("channels", "100000"),
         _genotype("g.json", _set("space_config.channels", 100_000))),
    Case("genotype-channels-text", ["retrain", "{w}/g.json", "--out", "{w}/out", *R], ("channels", "twelve"),
         _genotype("g.json", _set("space_config.channels", "twelve")), kind="unclear"),
    Case("genotype-channels-negative", ["inspect", "{w}/g.json"], ("channels",),
         _genotype("g.json", _set("space_config.channels", -3))),
    Case("genotype-frames-even", ["retrain", "{w}/g.json", "--out", "{w}/out", *R], ("frames",),
         _genotype("g.json", _set("space_config.frames", 4))),
    Case("genotype-space-config-typo", ["retrain", "{w}/g.json", "--out", "{w}/out", *R], ("chanels",),
         _genotype("g.json", _set("space_config.chanels", 4))),
    Case("genotype-unknown-space", ["retrain", "{w}/g.json", "--out", "{w}/out", *R], ("tmicz",),
         _genotype("g.json", _set("space", "tmicz"))),
    Case("genotype-space-py-file", ["inspect", "{w}/g.json"], ("python file", "--space"),
         _genotype("g.json", _set("space", "./evil.py:Space")), kind="code"),
    Case("genotype-space-py-render", ["render", "{w}/g.json", "--out", "{w}/out"], ("python file",),
         _genotype("g.json", _set("space", "evil.py:Space")), kind="code"),
    Case("genotype-space-py-retrain", ["retrain", "{w}/g.json", "--out", "{w}/out", *R], ("python file",),
         _genotype("g.json", _set("space", "evil.py:Space")), kind="code"),
    Case("genotype-space-not-text", ["inspect", "{w}/g.json"], ("space",), _genotype("g.json", _set("space", 7))),
    Case("genotype-cells-not-object", ["inspect", "{w}/g.json"], ("cells",),
         _genotype("g.json", _set("cells", [1]), "video_genotype.json")),
    Case("genotype-op-not-text", ["inspect", "{w}/g.json"], ("op",),
         _genotype("g.json", _set("cells.dna.nodes.0.0.op", 5), "video_genotype.json")),
    Case("genotype-macro-unknown", ["retrain", "{w}/g.json", "--out", "{w}/out", *R], ("alignment",),
         _genotype("g.json", _set("macro.alignment", "telepathy"), "video_genotype.json")),
    Case("genotype-future-version", ["inspect", "{w}/g.json"], ("version",),
         _genotype("g.json", _set("version", 99))),
    Case("genotype-n-inputs-huge", ["inspect", "{w}/g.json"], ("n_inputs",),
         _genotype("g.json", _set("cells.dna.n_inputs", 10**9), "video_genotype.json")),
    # --- DARTS text -------------------------------------------------------------------------------------------
    Case("darts-range-huge", ["inspect", "{w}/darts.txt"], ("range", "at most"),
         _darts("G = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], "
                "normal_concat=range(0, 10000000000))")),
    Case("darts-code-in-range", ["inspect", "{w}/darts.txt"], ("range",),
         _darts("G = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], "
                "normal_concat=range(__import__('os').getpid()))"), kind="code"),
    Case("darts-code-in-field", ["render", "{w}/darts.txt", "--out", "{w}/out"], ("not a plain literal",),
         _darts(f"G = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat="
                f"__import__('os').system('touch {PWNED}'))"), kind="code"),
    Case("darts-input-not-number", ["inspect", "{w}/darts.txt"], ("pairs",),
         _darts("G = Genotype(normal=[('sep_conv_3x3', 'x'), ('skip_connect', 1)], normal_concat=[2])")),
    Case("darts-syntax", ["inspect", "{w}/darts.txt"], ("darts.txt", "parenthes"), _darts("G = Genotype(normal=[(")),
    Case("darts-no-cells", ["inspect", "{w}/darts.txt"], ("no cell",), _darts("G = Genotype(normal_concat=[2])")),
    Case("darts-two-no-name", ["inspect", "{w}/darts.txt"], ("--name",),
         _darts(f"A = {GOOD_DARTS}\nB = {GOOD_DARTS}\n")),
    Case("darts-unknown-name", ["inspect", "{w}/darts.txt", "--name", "C"], ("'C'",),
         _darts(f"A = {GOOD_DARTS}\nB = {GOOD_DARTS}\n")),
    # --- YAML configs -----------------------------------------------------------------------------------------
    Case("yaml-lr-word", ["retrain", "{w}/genotype.json", "--out", "{w}/out", *R[:1], "{w}/c.yaml", *R[2:]],
         ("train.lr", "fast"), _yaml("c.yaml", "tiny_retrain.yaml", "train", lr="fast"), kind="unclear"),
    Case("yaml-epochs-fraction", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("train.epochs", "1.9"), _yaml("c.yaml", "tiny_retrain.yaml", "train", epochs=1.9), kind="silent"),
    Case("yaml-epochs-true", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("train.epochs", "true"), _yaml("c.yaml", "tiny_retrain.yaml", "train", epochs="true"), kind="silent"),
    Case("yaml-epochs-zero", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("epochs", ">= 1"), _yaml("c.yaml", "tiny_retrain.yaml", "train", epochs=0)),
    Case("yaml-batch-negative", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("batch_size",), _yaml("c.yaml", "tiny_retrain.yaml", "train", batch_size=-2)),
    Case("yaml-train-items-zero", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("train_items",), _yaml("c.yaml", "tiny_retrain.yaml", "data", train_items=0), kind="unclear"),
    Case("yaml-patch-tiny", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("patch_size",), _yaml("c.yaml", "tiny_retrain.yaml", "data", patch_size=3)),
    Case("yaml-key-typo", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("epocs", "did you mean"), _yaml("c.yaml", "tiny_retrain.yaml", "train", epocs=2)),
    Case("yaml-section-typo", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("trian",), _write("c.yaml", "trian: {epochs: 1}\n")),
    Case("yaml-list", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--config", "{w}/c.yaml"],
         ("mapping",), _write("c.yaml", "- 1\n- 2\n")),
    Case("yaml-syntax", ["search", "--out", "{w}/out", "--config", "{w}/c.yaml"], ("not valid yaml", "line 2"),
         _write("c.yaml", "epochs: [1, 2\n")),
    Case("yaml-python-tag", ["search", "--out", "{w}/out", "--config", "{w}/c.yaml"], ("not valid yaml", "plain"),
         _write("c.yaml", f"epochs: !!python/object/apply:os.system ['touch {PWNED}']\n"), kind="code"),
    Case("yaml-binary", ["search", "--out", "{w}/out", "--config", "{w}/model/model.pt"], ("model.pt",)),
    Case("yaml-missing", ["search", "--out", "{w}/out", "--config", "{w}/nope.yaml"],
         ("nope.yaml", "nas-restore config search")),
    Case("yaml-folder", ["search", "--out", "{w}/out", "--config", "{w}/data"], ("folder",)),
    Case("yaml-precision", ["search", "--out", "{w}/out", "--config", "{w}/c.yaml"], ("precision", "fp64"),
         _yaml("c.yaml", "tiny_search.yaml", None, precision="fp64")),
    Case("yaml-search-lr-word", ["search", "--out", "{w}/out", "--config", "{w}/c.yaml"], ("lr", "quick"),
         _yaml("c.yaml", "tiny_search.yaml", None, lr="quick"), kind="unclear"),
    Case("yaml-objectives-text", ["search", "--out", "{w}/out", "--config", "{w}/c.yaml"], ("objectives",),
         _yaml("c.yaml", "tiny_search.yaml", None, objectives="psnr")),
    Case("yaml-space-settings-list", ["search", "--out", "{w}/out", "--config", "{w}/c.yaml"], ("space_settings",),
         _yaml("c.yaml", "tiny_search.yaml", None, space_settings="[1, 2]")),
    Case("yaml-space-channels-huge", ["search", "--out", "{w}/out", "--config", "{w}/c.yaml"], ("channels",),
         _yaml("c.yaml", "tiny_search.yaml", None, space_settings="{channels: 100000}")),
    Case("yaml-search-space-py", ["search", "--out", "{w}/out", "--config", "{w}/c.yaml"], ("nothing_here.py",),
         _yaml("c.yaml", "tiny_search.yaml", None, space="nothing_here.py:Space")),
    # --- command-line values -----------------------------------------------------------------------------------
    Case("cli-epochs-fraction", ["retrain", "{w}/genotype.json", "--out", "{w}/out", "--epochs", "1.9"],
         ("--epochs", "1.9")),
    Case("cli-strategy-option-word", ["search", "--out", "{w}/out", *S, "--space", "tmics", "--strategy", "darts",
                                      "--strategy-option", "arc_learning_rate=fast"], ("arc_learning_rate", "fast")),
    Case("cli-strategy-option-unknown", ["search", "--out", "{w}/out", *S, "--space", "tmics", "--preset", "demo",
                                         "--strategy", "darts",
                                         "--strategy-option", "speed=1"], ("speed",)),
    Case("cli-strategy-option-no-equals", ["search", "--out", "{w}/out", *S, "--strategy-option", "fast"],
         ("key=value",)),
    Case("cli-unknown-strategy", ["search", "--out", "{w}/out", *S, "--strategy", "gdarts"], ("gdarts", "gdas")),
    Case("cli-unknown-space", ["search", "--out", "{w}/out", *S, "--space", "tmicz"], ("tmicz", "tmics")),
    Case("cli-unknown-preset", ["search", "--out", "{w}/out", *S, "--preset", "gigantic"], ("gigantic",)),
    Case("cli-search-rescnn", ["search", "--out", "{w}/out", *S], ("rescnn", "nothing to search")),
    Case("cli-frames-even", ["search", "--out", "{w}/out", *S, "--frames", "2"], ("frames",)),
    Case("cli-skip-cap-word", ["search", "--out", "{w}/out", *S, "--skip-cap", "many"], ("many",)),
    Case("cli-objective-unknown", ["search", "--out", "{w}/out", *S, "--strategy", "random",
                                   "--objectives", "psnr,beauty"], ("beauty",)),
    Case("cli-budget-negative", ["search", "--out", "{w}/out", *S, "--budget-seconds", "-5"], ("budget_seconds",)),
    Case("cli-max-trials-zero", ["search", "--out", "{w}/out", *S, "--strategy", "random", "--max-trials", "0"],
         ("max_trials",)),
    Case("cli-parallel-zero", ["search", "--out", "{w}/out", *S, "--strategy", "random", "--parallel", "0"],
         ("parallel",)),
    Case("cli-device-unknown", ["evaluate", "{w}/img_model/model.pt", "--data", "{w}/data", "--device", "tpu"],
         ("tpu",)),
    Case("cli-precision-unknown", ["profile", "rescnn", "--precision", "fp64", "--no-peak"], ("fp64",)),
    Case("cli-profile-size-word", ["profile", "rescnn", "--size", "big", "--no-peak"], ("big",)),
    Case("cli-profile-size-zero", ["profile", "rescnn", "--size", "0x0", "--no-peak"], ("size",)),
    Case("cli-profile-repeats-zero", ["profile", "rescnn", "--size", "16x16", "--repeats", "0", "--no-peak"],
         ("repeats",)),
    Case("cli-profile-threads-zero", ["profile", "rescnn", "--size", "16x16", "--threads", "0", "--no-peak"],
         ("threads",)),
    Case("cli-profile-space-unknown", ["profile", "space:tmicz", "--no-peak"], ("tmicz",)),
    Case("cli-tile-tiny", ["derain", "{w}/img_model/model.pt", "{w}/data/input", "--out", "{w}/out",
                           "--tile", "4"], ("tile",)),
    Case("cli-tile-overlap", ["derain", "{w}/img_model/model.pt", "{w}/data/input", "--out", "{w}/out",
                              "--tile", "16", "--tile-overlap", "12"], ("--tile-overlap",)),
    Case("cli-crop-border-negative", ["evaluate", "--data", "{w}/data", "--crop-border", "-1"], ("crop",)),
    Case("cli-crop-border-huge", ["evaluate", "--data", "{w}/data", "--crop-border", "500"], ("crop",)),
    Case("cli-inspect-channels-zero", ["inspect", "{w}/genotype.json", "--channels", "0"], ("channels",)),
    Case("cli-render-format", ["render", "{w}/genotype.json", "--out", "{w}/out", "--format", "bmp"], ("bmp",)),
    Case("cli-render-out-is-file", ["render", "{w}/genotype.json", "--out", "{w}/notes.txt"], ("notes.txt",)),
    Case("cli-rank-random-zero", ["rank", "random:0", "--like", "{w}/genotype.json", "--out", "{w}/out"],
         ("random:0",)),
    Case("cli-rank-random-word", ["rank", "random:many", "--like", "{w}/genotype.json", "--out", "{w}/out"],
         ("random:many",)),
    Case("cli-rank-profile-size", ["rank", "{w}/genotype.json", "--profile-size", "0x0", "--out", "{w}/out"],
         ("size",)),
    Case("cli-continual-task-unknown", ["continual", "{w}/video_genotype.json", "--out", "{w}/out",
                                        "--tasks", "light,drizzle"], ("drizzle",)),
    Case("cli-continual-scheme-unknown", ["continual", "{w}/video_genotype.json", "--out", "{w}/out",
                                          "--schemes", "finetune,magic"], ("magic",)),
    Case("cli-continual-space-config", ["continual", "{w}/video_genotype.json", "--out", "{w}/out",
                                        "--space-config", "channels=abc"], ("channels",)),
    Case("cli-compare-strategy-unknown", ["compare", "--out", "{w}/out", "--strategies", "darts,nonsense"],
         ("nonsense",)),
    Case("cli-compare-seeds-zero", ["compare", "--out", "{w}/out", "--seeds", "0"], ("seeds",)),
    # --- data folders ----------------------------------------------------------------------------------------
    Case("data-missing", ["evaluate", "--data", "{w}/nowhere"], ("nowhere",)),
    Case("data-empty", ["evaluate", "--data", "{w}/empty"], ("empty",), _write("empty/.keep", "")),
    Case("data-unpaired", ["evaluate", "--data", "{w}/data"], ("5.png",), _write("data/input/5.png", b"")),
    Case("data-corrupt-image", ["evaluate", "--data", "{w}/data"], ("2.png",), _write("data/target/2.png", b"junk")),
    Case("data-size-mismatch", ["evaluate", "--data", "{w}/data"], ("3.png",),
         lambda w: io.imsave(w / "data" / "target" / "3.png", np.zeros((10, 12, 3), np.uint8), check_contrast=False)),
    Case("data-split-unknown", ["evaluate", "--data", "{w}/data", "--split", "fitt"], ("fitt",)),
    Case("data-splits-broken", ["evaluate", "--data", "{w}/data", "--split", "fit"], ("splits.txt",),
         _write("data/SPLITS.txt", "fit 1 2 3\n")),
    Case("retrain-on-holdout", ["retrain", "{w}/genotype.json", "--out", "{w}/out", *R, "--data", "{w}/data",
                                "--split", "holdout"], ("holdout",), kind="silent"),
    Case("retrain-on-folder-with-holdout", ["retrain", "{w}/genotype.json", "--out", "{w}/out", *R, "--data",
                                            "{w}/data"], ("holdout", "--split"), kind="silent"),
    Case("search-on-holdout", ["search", "--out", "{w}/out", *S, "--data", "{w}/data", "--split", "holdout"],
         ("holdout",), kind="silent"),
    Case("rank-train-on-holdout", ["rank", "{w}/genotype.json", "--train-data", "{w}/data", "--train-split",
                                   "holdout", "--eval-data", "{w}/data", "--eval-split", "fit", "--out", "{w}/out"],
         ("holdout",), kind="silent"),
    Case("derain-input-missing", ["derain", "{w}/img_model/model.pt", "{w}/nothing.png", "--out", "{w}/out"],
         ("nothing.png",)),
    Case("derain-input-corrupt", ["derain", "{w}/img_model/model.pt", "{w}/notes.txt", "--out", "{w}/out"],
         ("notes.txt",)),
    Case("render-run-bad-alphas", ["render", "{w}/search_run", "--out", "{w}/out"], ("alphas.csv", "lacks")),
    Case("rank-seeds-zero", ["rank", "{w}/genotype.json", "--seeds", "0", "--out", "{w}/out"], ("seeds",)),
    Case("synth-unknown-rain", ["synth", "{w}/clips/target/c1", "--rain", "drizzle", "--frames", "3",
                                "--out", "{w}/out"], ("drizzle", "light")),
    Case("synth-input-missing", ["synth", "{w}/nothing.mp4", "--out", "{w}/out"], ("nothing.mp4",)),
    Case("synth-out-is-input", ["synth", "{w}/clips/target/c1", "--frames", "3", "--out", "{w}/clips/target/c1"],
         ("c1",), kind="lost"),
    Case("retrain-run-folder-without-genotype", ["retrain", "{w}/data", "--out", "{w}/out", *R],
         ("genotype.json",)),
]


def test_the_catalogue_is_large_and_covers_every_kind():
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} >= {"traceback", "unclear", "silent", "lost", "code"}


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    changed: list[str]     # world files changed outside the case's own output
    code_ran: bool         # the hostile space file or payload ran


def run_case(case: Case, template: Path, workdir: Path, capture: Callable[[], tuple[str, str]]) -> Outcome:
    """Copy the world into ``workdir``, write the bad input, run the command in-process, and look around."""
    w = workdir / "w"
    shutil.copytree(template, w)
    here = Path.cwd()
    os.chdir(w)  # relative names in genotypes (evil.py:Space) resolve inside the world
    try:
        if case.setup is not None:
            case.setup(w)
        before = _snapshot(w)
        try:
            code = cli.main([a.replace("{w}", str(w)) for a in case.argv])
        except SystemExit as exit_:  # argparse: a value of the wrong type for a flag
            code = exit_.code
    finally:
        os.chdir(here)
    out, err = capture()
    after = _snapshot(w)
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not k.startswith(tuple(case.may_change)))
    return Outcome(code, out, err.replace(str(w), "W"), changed, (w / PWNED).exists())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(case: Case, world_template: Path, tmp_path: Path,
                                                          capsys):
    def capture() -> tuple[str, str]:
        captured = capsys.readouterr()
        return captured.out, captured.err

    result = run_case(case, world_template, tmp_path, capture)
    err = result.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    assert result.code == 2, f"exit {result.code}\nstdout: {result.stdout}\nstderr: {err}"
    message = err.strip().splitlines()[-1] if err.strip() else ""
    assert "error:" in message, err
    for word in case.expect:
        assert word.replace("{w}", "W").lower() in err.lower(), f"{word!r} not in: {err}"
    assert not result.code_ran, "code from a data file ran"
    assert not result.changed, f"files changed outside the command's own output: {result.changed}"


def test_numbers_in_yaml_are_numbers_and_the_fix_is_named():
    """PyYAML reads `1e-3` as text (YAML 1.1 wants a dot): it is still the number it means."""
    from nas_restore import config as cfg
    from nas_restore.training import RetrainConfig

    assert cfg.from_dict(RetrainConfig, yaml.safe_load("lr: 1e-3\nepochs: 2.0\n")).lr == pytest.approx(1e-3)
    assert cfg.from_dict(RetrainConfig, {"epochs": 2.0}).epochs == 2


def test_a_trusted_space_file_named_on_the_command_line_is_used(tmp_path, monkeypatch):
    """The consent path: a genotype naming a user space works once the user passes that space file."""
    import search_spaces

    monkeypatch.chdir(tmp_path)
    (tmp_path / "marker_space.py").write_text("from pathlib import Path\nPath('imported').write_text('yes')\n")
    with pytest.raises(search_spaces.SpaceLoadError, match="does not run code"):
        search_spaces.space_of("marker_space.py:Space")
    assert not (tmp_path / "imported").exists()
    monkeypatch.setattr(search_spaces, "_ALLOWED_SPACE_FILES", set())
    cli._allow_named_space_files("marker_space.py:Space")
    with pytest.raises(search_spaces.SpaceLoadError, match="no class 'Space'"):
        search_spaces.space_of("marker_space.py:Space")  # imported (with consent), then found wanting
    assert (tmp_path / "imported").exists()


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("internal")

    monkeypatch.setitem(cli.COMMANDS, "ops", broken)
    with pytest.raises(RuntimeError, match="internal"):
        cli.main(["ops"])
    assert "this is a bug in nas-restore" in capsys.readouterr().err


def test_the_cli_runs_as_a_process_without_traceback_on_a_bad_model(tmp_path):
    """The same as a user's shell sees it: a separate process, stderr, exit status 2."""
    (tmp_path / "model.pt").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "nas_restore.cli", "evaluate", str(tmp_path / "model.pt"),
                           "--data", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "error:" in done.stderr, done.stderr
