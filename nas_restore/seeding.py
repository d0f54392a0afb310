"""The one seeding point: every search, retraining and study seeds through :func:`seed_everything`.

A network's initial weights must depend on its seed only, not on what ran earlier in the process (a
search draws random numbers differently per strategy): so each command seeds right before it builds
a network, and again where training starts. The same as Lightning's ``seed_everything(seed,
workers=True)``: Python, numpy and torch (all devices), and the variables Lightning's DataLoader
workers read, without importing Lightning.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> int:
    """Seed Python's, numpy's and torch's generators (and Lightning's worker seeding) with ``seed``."""
    seed = int(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = "1"
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every device's generator, CUDA included
    return seed


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed torch's generator from ``(seed, epoch)`` as a training epoch starts: whatever draws from it during
    the epoch (the random crops and flips of image folders, dropout) is then the same in a run resumed at that
    epoch as in one never stopped (Lightning's checkpoint does not hold the generator's state)."""
    torch.manual_seed(1_000_003 * int(seed) + 7_919 * int(epoch) + 1)


__all__ = ["seed_everything", "seed_epoch"]
