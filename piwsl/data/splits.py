"""The paper's split protocol (App. B): seeded shuffle, a test set fixed across training sizes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Split:
    """Indices into the source data of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    #: Unseen conformations of training molecules (``make_molecule_split``), if asked for.
    test_conformations: np.ndarray | None = None

    def names(self) -> tuple[str, ...]:
        """The splits this split has, in the order they are written."""
        return ("train", "val", "test") + (() if self.test_conformations is None else ("test_conformations",))

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in self.names()}


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


def make_molecule_split(
    molecules: np.ndarray, train_size: int, val_size: int, test_size: int, seed: int, test_conformations: int = 0
) -> Split:
    """Split records by molecule: the test and validation sets hold molecules no other split has.

    ``molecules`` (n,) gives each record's molecule identity (any values comparable for equality).
    The molecules are shuffled with ``seed`` and taken in that order until the test set holds at
    least ``test_size`` records (the last molecule may overshoot by less than its own size), or
    while the others keep train + validation records if fewer are left; the next molecules give
    the validation set, exactly ``val_size`` records drawn from their conformations (the rest of
    those, fewer than the last molecule has, go unused: no training record shares a validation
    molecule); then the
    records of the remaining molecules are shuffled and give train. So validation, like the test
    set, measures unseen molecules, and model selection is on the kind of error the test set
    reports. Unless the test cap binds, the test set depends only on ``molecules``, ``test_size``
    and ``seed``, and validation also on ``val_size``: both are the same for every training size,
    and with one validation size training sets of increasing size are nested. Indices are
    returned sorted.

    ``test_conformations`` > 0 adds a second test set of *unseen conformations of training
    molecules*: before train is drawn, one conformation of every remaining molecule with at least
    two is set aside (the first of it in the shuffled order; this pool does not depend on the
    training size), and the split holds the pooled conformations of the molecules that have
    training records, the first ``test_conformations`` of them in that order. So it never overlaps
    train or validation, and at most one conformation per training molecule is in it: its size is
    at most ``min(test_conformations, molecules in train)``, and it grows with the training set
    (nested, as the training sets are, while the cap does not bind).
    """
    if train_size < 1 or val_size < 0 or test_size < 1 or test_conformations < 0:
        raise ValueError(
            f"split sizes must be positive: train={train_size}, val={val_size}, test={test_size}, "
            f"test_conformations={test_conformations}"
        )
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
    others = order[taken:]
    enough = int(np.searchsorted(np.cumsum(counts[others]), val_size)) + 1 if val_size > 0 else 0
    validation_molecules = others[:enough]
    # the validation molecules' records in the shuffled order; the first val_size of them are the split
    val_order = rng.permutation(np.flatnonzero(np.isin(record_molecule, validation_molecules)))
    rest = rng.permutation(np.flatnonzero(~in_test & ~np.isin(record_molecule, validation_molecules)))
    pool = None
    if test_conformations > 0:
        rest, pool = _set_aside_one_per_molecule(rest, record_molecule)
    if val_order.size < val_size or rest.size < train_size:
        aside = " and one conformation per other molecule" if pool is not None else ""
        raise ValueError(
            f"{num_records} records of {counts.size} molecules leave {rest.size} for train={train_size} once the "
            f"test molecules, the validation molecules (val={val_size}){aside} are set aside; lower the sizes"
        )
    train = rest[:train_size]
    split = Split(train=np.sort(train), val=np.sort(val_order[:val_size]), test=np.flatnonzero(in_test))
    if pool is None:
        return split
    seen = np.isin(record_molecule[pool], record_molecule[train])
    return replace(split, test_conformations=np.sort(pool[seen][:test_conformations]))


def _set_aside_one_per_molecule(order: np.ndarray, record_molecule: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the record ``order`` into what stays and the first record of each molecule with >= 2 records in it."""
    molecules = record_molecule[order]
    _, first, counts = np.unique(molecules, return_index=True, return_counts=True)
    chosen = np.zeros(order.size, dtype=bool)
    chosen[first[counts >= 2]] = True
    return order[~chosen], order[chosen]
