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


def default_test_size(num_records: int, train_size: int, val_size: int, format_default: int) -> int:
    """The test size when none is given: the format's default, or what train and validation leave.

    Only the first keeps the test set the same for every training size; the second (a source too
    small for the default) does not, which ``prepare_dataset`` warns about. Give a test size to
    fix the test set on a small source.
    """
    return max(0, min(format_default, num_records - train_size - val_size))


def make_split(num_records: int, train_size: int, val_size: int, test_size: int, seed: int) -> Split:
    """Shuffle ``range(num_records)`` with ``seed``; test first, then train, then validation.

    The test set is drawn first and independently of the training size: the first ``test_size``
    records of the permutation, the same for every training size with the same seed, so that no
    training set of any size overlaps another size's test set; training sets of increasing size
    are nested. A source too small for all three splits is an error (lower ``test_size``): the test
    set never shrinks to "what is left". Each split's indices are returned sorted (the order
    records are streamed and written in).
    """
    for name, size in (("train", train_size), ("val", val_size), ("test", test_size)):
        if size < 1:
            raise ValueError(f"--{name}-size {size}: split sizes must be positive (every split is needed)")
    if test_size + train_size + val_size > num_records:
        raise ValueError(
            f"{num_records} records cannot hold test={test_size} + train={train_size} + val={val_size}; "
            f"lower the test size to at most {num_records - train_size - val_size} for this training size, "
            "and use the same test size for every training size"
        )
    order = np.random.default_rng(seed).permutation(num_records)
    test = np.sort(order[:test_size])
    rest = order[test_size:]
    return Split(train=np.sort(rest[:train_size]), val=np.sort(rest[train_size : train_size + val_size]), test=test)


def make_split_with_test_file(num_records: int, train_size: int, val_size: int, test_count: int, seed: int) -> Split:
    """Train and validation from ``range(num_records)`` (seeded shuffle); the test split is another file's records.

    Validation is drawn first, so that it is the same for every training size with the same seed
    (the models of a learning curve are selected on the same structures), then train; training
    sets of increasing size are nested. ``test`` holds ``range(test_count)``: every record of the
    test file. Sorted indices, as ``make_split``.
    """
    for name, size in (("train", train_size), ("val", val_size)):
        if size < 1:
            raise ValueError(f"--{name}-size {size}: split sizes must be positive (every split is needed)")
    if test_count < 1:
        raise ValueError("the --test-src file holds no records")
    if train_size + val_size > num_records:
        raise ValueError(
            f"{num_records} records cannot hold train={train_size} + val={val_size}; lower the validation size "
            f"to at most {num_records - train_size} and use the same for every training size"
        )
    order = np.random.default_rng(seed).permutation(num_records)
    val = np.sort(order[:val_size])
    train = np.sort(order[val_size : val_size + train_size])
    return Split(train=train, val=val, test=np.arange(test_count))


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
