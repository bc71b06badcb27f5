"""The paper's split protocol (App. B): seeded shuffle, a test set fixed across training sizes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Indices into the source data of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def default_val_size(train_size: int) -> int:
    """Validation as large as training, at least 100 (App. B)."""
    return max(train_size, 100)


def make_split(num_records: int, train_size: int, val_size: int, test_size: int, seed: int) -> Split:
    """Shuffle ``range(num_records)`` with ``seed``; test first, then train, then validation.

    Taking the test set from the front of the permutation keeps it the same for every training
    size with the same seed, and training sets of increasing size are nested. When fewer records
    remain than ``test_size``, the test set is everything left after train and validation.
    Each split's indices are returned sorted (the order records are streamed and written in).
    """
    for name, size in (("train", train_size), ("val", val_size), ("test", test_size)):
        if size < 1:
            raise ValueError(f"--{name}-size {size}: split sizes must be positive (every split is needed)")
    available_for_test = num_records - train_size - val_size
    if available_for_test < 1:
        raise ValueError(f"{num_records} records cannot hold train={train_size} + val={val_size} and a test set")
    test_size = min(test_size, available_for_test)
    order = np.random.default_rng(seed).permutation(num_records)
    test = np.sort(order[:test_size])
    rest = order[test_size:]
    return Split(train=np.sort(rest[:train_size]), val=np.sort(rest[train_size : train_size + val_size]), test=test)
