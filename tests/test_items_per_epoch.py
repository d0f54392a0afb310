"""`data.items_per_epoch`: an epoch of a small folder drawn to a stated number of random crops."""

from collections import Counter

import pytest
import torch

from nas_restore.config import ConfigError, from_dict
from nas_restore.datasets import DataConfig, per_epoch, train_val_datasets


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from nas_restore.data.synthetic import write_synthetic_folder

    root = write_synthetic_folder(tmp_path_factory.mktemp("pairs"), kind="images", count=8, size=24, seed=5)
    (root / "SPLITS.txt").write_text("fit: 1 2 3 4 5 6\nholdout: 7 8\n")
    return root


def test_an_epoch_draws_the_training_items_in_turn_up_to_items_per_epoch(folder):
    plain_train, plain_val = train_val_datasets(DataConfig(folder=str(folder), split="fit", patch_size=8), 1, seed=0)
    train, val = train_val_datasets(DataConfig(folder=str(folder), split="fit", patch_size=8, items_per_epoch=23),
                                    1, seed=0)
    assert len(plain_train) == 5 and len(train) == 23
    assert list(val.indices) == list(plain_val.indices)  # validation unchanged: once per epoch, the same items
    counts = Counter(train.indices)
    assert set(counts) == set(plain_train.indices)  # only the training items, never a validation (or holdout) one
    assert sorted(counts.values()) == [4, 4, 5, 5, 5]  # each item 23 // 5 times or once more
    # each draw of an item is a fresh random crop
    torch.manual_seed(0)
    first = [train[k][1] for k, i in enumerate(train.indices) if i == train.indices[0]]
    assert len(first) >= 4 and not all(torch.equal(first[0], crop) for crop in first[1:])


def test_per_epoch_and_the_setting_are_checked():
    assert per_epoch([3, 1, 2], None) == [3, 1, 2]
    assert per_epoch([3, 1, 2], 7) == [3, 1, 2, 3, 1, 2, 3]
    assert per_epoch([3, 1, 2], 2) == [3, 1]
    with pytest.raises(ConfigError, match="items_per_epoch must be >= 1"):
        from_dict(DataConfig, {"items_per_epoch": 0}, "data")
    train, _ = train_val_datasets(DataConfig(train_items=6, val_items=2, patch_size=16, items_per_epoch=10), 1, seed=0)
    assert len(train) == 10  # synthetic: its train_items, drawn in turn


def test_a_retraining_epoch_has_items_per_epoch_over_batch_steps(folder, tmp_path):
    from nas_restore.build import build_model
    from nas_restore.training import RetrainConfig, retrain

    data = DataConfig(folder=str(folder), split="fit", patch_size=16, items_per_epoch=12)
    train, val = train_val_datasets(data, 3, seed=0)  # the rescnn reference takes 3 frames
    retrain(build_model("rescnn"), train, val, RetrainConfig(epochs=1, batch_size=4, progress=False, device="cpu"),
            tmp_path / "r")
    checkpoint = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3 and checkpoint["epoch"] == 0  # one epoch of 12 items at batch 4
