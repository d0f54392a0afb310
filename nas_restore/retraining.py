"""Retraining a genotype from scratch: the run behind `nas-restore retrain` and the demo."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from nas_restore import config as cfg
from nas_restore.build import build_model, store_genotype
from nas_restore.datasets import DataConfig, synthetic_split, train_val_datasets
from nas_restore.genotype import Genotype, GenotypeError
from nas_restore.outputs import RunLock, check_run_folder, is_secondary_rank
from nas_restore.seeding import seed_everything
from nas_restore.sources import load_genotype
from nas_restore.temporal import TemporalPairs
from nas_restore.training import RetrainConfig, RetrainResult, retrain

log = logging.getLogger(__name__)


@dataclass
class RetrainRunConfig:
    """Training settings plus the data; a YAML file for `nas-restore retrain --config` holds these."""

    train: RetrainConfig = field(default_factory=RetrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


def run_retrain(genotype: Genotype | str | Path, config: RetrainRunConfig, out_dir: str | Path) -> RetrainResult:
    """Build the genotype's network, train it from scratch, write ``out_dir`` (resumable)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise cfg.ConfigError(f"--out {out_dir} is a file: give a folder for the retraining's model.pt, "
                              "checkpoints and metrics")
    if not isinstance(genotype, Genotype):
        genotype = load_genotype(genotype)
    check_run_folder(out_dir, "retrain")  # a search's run folder is not overwritten (it has genotype.json too)
    _refuse_foreign_run(out_dir, genotype)
    # one command per folder: a second retraining into it now would mix its checkpoints with this one's
    with RunLock(out_dir, kind="retrain"):
        return _retrain_into(genotype, config, out_dir)


def _retrain_into(genotype: Genotype, config: RetrainRunConfig, out_dir: Path) -> RetrainResult:
    """The retraining itself, in a folder claimed and locked by :func:`run_retrain`."""
    # the initial weights depend on --seed only, not on whatever ran before in this process
    seed_everything(config.train.seed)
    model = build_model(genotype)
    frames = int(genotype.space_config.get("frames", 1))
    if not is_secondary_rank():  # DDP: the other processes run this command too, but only rank 0 writes
        genotype.save(out_dir / "genotype.json")
        cfg.save_yaml(config, out_dir / "config.yaml")
    train_data, val_data = train_val_datasets(config.data, frames, config.train.seed)
    if config.train.loss.temporal_weight > 0:
        train_data = temporal_training_data(config.data, frames, config.train.seed, train_data)
    log.info("retrain %s: %d parameters, %d train / %d val items", genotype.genotype_id(),
             sum(p.numel() for p in model.parameters()), len(train_data), len(val_data))
    result = retrain(model, train_data, val_data, config.train, out_dir)
    if result.rank == 0:  # DDP: rank 0 wrote model.pt
        # the weights file also carries the genotype, so `evaluate`/`derain` need nothing else
        store_genotype(result.model_path, genotype)  # with its fingerprint: an edit later is refused
    return result


def temporal_training_data(data: DataConfig, frames: int, seed: int, train_data: Dataset) -> Dataset:
    """Training pairs of shifted windows for the temporal loss (validation keeps the plain windows).

    Synthetic: the same train split drawn with ``frames + 2`` frames per clip window; a folder of clips:
    its training subset, read as (t-1, t) pairs. Image pairs have no previous frame: a DataError.
    """
    if data.folder is None:
        return TemporalPairs(synthetic_split(data, frames + 2, "train", seed), frames)
    return TemporalPairs(train_data, frames, patch_size=data.patch_size, augment=True, seed=seed)


def _refuse_foreign_run(out_dir: Path, genotype: Genotype) -> None:
    """A folder resumes only the retraining of the same architecture; anything else would be lost or mixed."""
    previous = out_dir / "genotype.json"
    if not previous.exists():
        return
    old = load_genotype(previous, validate=False)
    if old.genotype_id() != genotype.genotype_id():
        raise GenotypeError(f"{out_dir} holds the retraining of genotype {old.genotype_id()}, not "
                            f"{genotype.genotype_id()}: give another --out (nothing was changed there)")
