"""Which data a search or a retraining run uses: built-in synthetic rain, or the user's folders.

Synthetic splits are disjoint by seed: ``train`` and ``val`` are drawn from different seeds, and the
demo's held-out test clips from yet another. A folder is split into train/val by a fixed fraction
of its items (never use a benchmark's holdout split here: pass its ``fit`` split).

An epoch is one pass over the training items, unless ``items_per_epoch`` says otherwise: a small folder
(Rain100L's ``fit`` split leaves 43 training pairs, 5 steps at batch 8) would otherwise validate, checkpoint
and log every few steps, so a recipe of thousands of steps would spend its time on validation. With
``items_per_epoch: 500`` an epoch draws the training items in turn until it has 500 (each a fresh random
crop and flip, as every training draw is), and validation runs once per such epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from nas_restore.data.folders import SPLITS_FILE, DataError, open_dataset, read_splits
from nas_restore.data.synthetic import SyntheticRainDataset

# seed offsets keep the synthetic splits apart for any user seed
_SPLIT_SEED = {"train": 1, "val": 2, "test": 3}


@dataclass
class DataConfig:
    """Where the pairs come from. ``folder: null`` means the built-in synthetic rain."""

    folder: str | None = None
    split: str | None = None               # a SPLITS.txt split of the folder, e.g. "fit" for Rain100L
    val_fraction: float = 0.2              # of a folder's items, for validation
    patch_size: int = 48
    train_items: int = 256                 # synthetic only
    val_items: int = 32                    # synthetic only
    rain_types: list[str] = field(default_factory=lambda: ["light", "heavy", "slanted", "accumulation"])
    clip_length: int = 7                   # synthetic clips: frames per clip
    items_per_epoch: int | None = None     # items per training epoch (the training items in turn); None: each once

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be >= 8, got {self.patch_size}")
        for name in ("train_items", "val_items", "clip_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.items_per_epoch is not None and self.items_per_epoch < 1:
            raise ValueError(f"data.items_per_epoch must be >= 1 or null (one pass over the training items), got "
                             f"{self.items_per_epoch}")


def synthetic_split(config: DataConfig, frames: int, split: str, seed: int, length: int | None = None,
                    size: int | None = None) -> Dataset:
    if split not in _SPLIT_SEED:
        raise ValueError(f"split must be one of {list(_SPLIT_SEED)}, got {split!r}")
    default_length = config.train_items if split == "train" else config.val_items
    return SyntheticRainDataset(
        length=length or default_length, frames=frames, size=size or config.patch_size,
        rain_types=list(config.rain_types), seed=10_000 * seed + _SPLIT_SEED[split],
        clip_length=max(config.clip_length, frames))


FORBIDDEN_TRAIN_SPLITS = ("holdout",)  # final evaluation only: never searched, trained or tuned on


def check_training_split(config: DataConfig) -> None:
    """Refuse to search or train on a holdout split, or on a whole folder whose SPLITS.txt defines one."""
    if config.folder is None:
        return
    if config.split is not None and config.split.lower() in FORBIDDEN_TRAIN_SPLITS:
        raise DataError(f"refusing to train on the split {config.split!r} of {config.folder} (or to search on it): a "
                        "holdout split is for the final evaluation only. Use another split (e.g. --split fit) and score "
                        f"on this one with `nas-restore evaluate MODEL --data {config.folder} --split {config.split}`")
    if config.split is None and (Path(config.folder) / SPLITS_FILE).is_file():
        held = [s for s in read_splits(Path(config.folder)) if s.lower() in FORBIDDEN_TRAIN_SPLITS]
        if held:
            raise DataError(f"{config.folder} defines the split(s) {held} in {SPLITS_FILE}; training on the whole "
                            "folder would train on them: pass a split (e.g. --split fit)")


def per_epoch(indices: list[int], items_per_epoch: int | None) -> list[int]:
    """The training indices of one epoch: ``indices`` as they are (None), or drawn in turn until there are
    ``items_per_epoch`` of them (each item ``items_per_epoch // n`` or one more times; the epoch's sampler
    shuffles them, and each draw of an item is a fresh random crop)."""
    if items_per_epoch is None or not indices:
        return list(indices)
    return [indices[k % len(indices)] for k in range(items_per_epoch)]


def train_val_datasets(config: DataConfig, frames: int, seed: int) -> tuple[Dataset, Dataset]:
    """The (train, val) pair for a search or a retraining run (never of a holdout split); the training set has
    ``config.items_per_epoch`` items when that is set (the training items repeated in turn)."""
    if config.folder is None:
        train = synthetic_split(config, frames, "train", seed)
        if config.items_per_epoch is not None:
            train = Subset(train, per_epoch(list(range(len(train))), config.items_per_epoch))
        return train, synthetic_split(config, frames, "val", seed)
    check_training_split(config)
    root = Path(config.folder)
    train_full = open_dataset(root, frames=frames, patch_size=config.patch_size, augment=True, seed=seed,
                              split=config.split)
    val_full = open_dataset(root, frames=frames, patch_size=config.patch_size, augment=False, seed=seed,
                            split=config.split)
    n = len(train_full)
    if n < 2:
        raise DataError(f"{root} has {n} item(s): need at least 2 to split into train and validation "
                        "(add pairs, or pick a larger split)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * config.val_fraction)))
    return Subset(train_full, per_epoch(order[n_val:], config.items_per_epoch)), Subset(val_full, order[:n_val])
