"""The split protocol (App. B): disjoint, reproducible, test set fixed across N_train, nested training sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fairchem.core.datasets import LmdbDataset
from trainer_helpers import ETHANOL

from piwsl.data.formats import Rmd17Source, read_rmd17
from piwsl.data.prepare import prepare_dataset
from piwsl.data.splits import default_test_size, default_val_size, make_split


def test_splits_are_disjoint_sorted_and_sized():
    split = make_split(1000, 50, 100, 300, seed=1)
    parts = [split.train, split.val, split.test]
    assert [len(p) for p in parts] == [50, 100, 300]
    assert len(np.unique(np.concatenate(parts))) == 450
    assert all(np.all(np.diff(p) > 0) for p in parts)


def test_test_set_is_fixed_across_training_sizes_and_training_sets_nest():
    splits = [make_split(20_000, n, default_val_size(n), 10_000, seed=7) for n in (50, 100, 1000)]
    for split in splits[1:]:
        np.testing.assert_array_equal(split.test, splits[0].test)
    assert set(splits[0].train) <= set(splits[1].train) <= set(splits[2].train)
    np.testing.assert_array_equal(make_split(20_000, 100, 100, 10_000, 7).train, splits[1].train)
    assert not np.array_equal(make_split(20_000, 100, 100, 10_000, 8).test, splits[0].test)


def test_validation_default_and_small_data():
    assert default_val_size(50) == 100 and default_val_size(1000) == 1000
    with pytest.raises(ValueError, match="cannot hold test=10000 "):
        make_split(150, 20, 100, 10_000, seed=0)  # the test set never shrinks to what is left
    with pytest.raises(ValueError, match="cannot hold"):
        make_split(120, 20, 100, 10, seed=0)


def test_default_test_size_is_the_formats_or_what_is_left():
    assert default_test_size(50_000, 100, 100, 10_000) == 10_000 and default_test_size(1500, 100, 100, 10_000) == 1300


def test_no_training_set_overlaps_the_test_set_of_another_training_size():
    """On a small source (1,500 aspirin frames, test 300) the test set stays fixed as N_train grows."""
    splits = {n: make_split(1500, n, 200, 300, seed=0) for n in (100, 1000)}
    np.testing.assert_array_equal(splits[100].test, splits[1000].test)
    for train in (splits[100].train, splits[1000].train):
        assert not set(train) & set(splits[100].test)


def lmdb_energies(path):
    dataset = LmdbDataset({"src": str(path)})
    return np.array([dataset[i].energy for i in range(len(dataset))])


def test_prepared_test_split_is_identical_for_every_training_size(tmp_path):
    metadata = {}
    for n in (5, 15):
        out = tmp_path / f"n{n}"
        metadata[n] = prepare_dataset(Rmd17Source(ETHANOL), out, n, n, 25, 4)
        indices = json.loads((out / "split_indices.json").read_text())
        assert len(set(indices["train"]) | set(indices["val"]) | set(indices["test"])) == 2 * n + 25
        metadata[n]["indices"] = indices
    assert metadata[5]["indices"]["test"] == metadata[15]["indices"]["test"]
    np.testing.assert_array_equal(lmdb_energies(tmp_path / "n5/test"), lmdb_energies(tmp_path / "n15/test"))
    assert set(metadata[5]["indices"]["train"]) <= set(metadata[15]["indices"]["train"])


def test_preparation_is_reproducible(tmp_path):
    for name in ("a", "b"):
        prepare_dataset(read_rmd17(ETHANOL), tmp_path / name, 8, 8, 16, 0, ETHANOL, "rmd17")
    for split in ("train", "val", "test"):
        a, b = (LmdbDataset({"src": str(tmp_path / f"{name}/{split}")}) for name in ("a", "b"))
        assert len(a) == len(b) == {"train": 8, "val": 8, "test": 16}[split]
        for i in range(len(a)):
            assert a[i].energy == b[i].energy and a[i].sid == b[i].sid == i
            assert torch.equal(a[i].pos, b[i].pos) and torch.equal(a[i].forces, b[i].forces)
    assert (tmp_path / "a/split_indices.json").read_text() == (tmp_path / "b/split_indices.json").read_text()


def test_energy_only_training_split_has_no_forces(tmp_path):
    metadata = prepare_dataset(
        read_rmd17(ETHANOL), tmp_path / "e", 8, 8, 16, 0, ETHANOL, "rmd17", train_without_forces=True
    )
    assert metadata["train_has_forces"] is False and metadata["has_forces"] is True
    train, val = (LmdbDataset({"src": str(tmp_path / f"e/{s}")}) for s in ("train", "val"))
    assert all("forces" not in train[i] for i in range(len(train)))
    assert all("forces" in val[i] for i in range(len(val)))
    assert metadata["train_statistics"]["force_rms"] > 0  # the labels exist; only the LMDB drops them
