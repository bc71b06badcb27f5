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
    if train_size < 1 or val_size < 0 or test_size < 0:
        raise ValueError(f"split sizes must be positive: train={train_size}, val={val_size}, test={test_size}")
    available_for_test = num_records - train_size - val_size
    if available_for_test < 1:
        raise ValueError(f"{num_records} records cannot hold train={train_size} + val={val_size} and a test set")
    test_size = min(test_size, available_for_test)
    order = np.random.default_rng(seed).permutation(num_records)
    test = np.sort(order[:test_size])
    rest = order[test_size:]
    return Split(train=np.sort(rest[:train_size]), val=np.sort(rest[train_size : train_size + val_size]), test=test)


def make_molecule_split(molecules: np.ndarray, train_size: int, val_size: int, test_size: int, seed: int) -> Split:
    """Split records by molecule for the test set: it holds only molecules no other split has.

    ``molecules`` (n,) gives each record's molecule identity (any values comparable for equality).
    The molecules are shuffled with ``seed`` and taken in that order until the test set holds at
    least ``test_size`` records (the last molecule may overshoot by less than its own size), or
    while the others keep train + validation records if fewer are left; then the records of the
    other molecules are shuffled and give train, then validation (so validation measures unseen
    conformations, the test set unseen molecules). Unless that cap binds, the test set depends only
    on ``molecules``, ``test_size`` and ``seed``: it is the same for every training size, and
    training sets of increasing size are nested. Indices are returned sorted.
    """
    if train_size < 1 or val_size < 0 or test_size < 1:
        raise ValueError(f"split sizes must be positive: train={train_size}, val={val_size}, test={test_size}")
    num_records = len(molecules)
    rng = np.random.default_rng(seed)
    _, record_molecule, counts = np.unique(molecules, return_inverse=True, return_counts=True)
    order = rng.permutation(counts.size)
    cumulative = np.cumsum(counts[order])
    fitting = int(np.searchsorted(cumulative, num_records - train_size - val_size, side="right"))
    taken = min(int(np.searchsorted(cumulative, test_size)) + 1, fitting)
    if taken < 1:
        raise ValueError(
            f"{num_records} records of {counts.size} molecules cannot hold train={train_size} + val={val_size} "
            "and a test set of whole molecules"
        )
    in_test = np.isin(record_molecule, order[:taken])
    rest = rng.permutation(np.flatnonzero(~in_test))
    return Split(
        train=np.sort(rest[:train_size]),
        val=np.sort(rest[train_size : train_size + val_size]),
        test=np.flatnonzero(in_test),
    )
