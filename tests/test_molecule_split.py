"""Splits by molecule: test and validation sets of unseen molecules, drawn first, the same for every training size."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from trainer_helpers import ETHANOL, ROOT

from piwsl.data.ani1x import Ani1xSource
from piwsl.data.formats import Rmd17Source
from piwsl.data.prepare import prepare_dataset
from piwsl.data.splits import default_val_size, make_molecule_split

ANI1X_SMALL = ROOT / "tests/data/ani1x_like_small.h5"


def molecules_of(sizes: list[int]) -> np.ndarray:
    """Molecule identities of records: molecule m has sizes[m] records, interleaved by a fixed shuffle."""
    ids = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(99).permutation(ids)


def test_test_and_validation_molecules_appear_in_no_other_split():
    molecules = molecules_of([3, 7, 1, 12, 5] * 40)
    split = make_molecule_split(molecules, 150, 100, 200, seed=2)
    assert [len(split.train), len(split.val)] == [150, 100] and 200 <= len(split.test) < 212
    assert not set(molecules[split.test]) & set(molecules[np.concatenate([split.train, split.val])])
    assert not set(molecules[split.val]) & set(molecules[split.train])  # validation: unseen molecules too
    assert len(np.unique(np.concatenate([split.train, split.val, split.test]))) == 250 + len(split.test)
    assert all(np.all(np.diff(part) > 0) for part in (split.train, split.val, split.test))


def test_test_molecules_are_the_same_for_every_training_size_and_training_sets_nest():
    molecules = molecules_of([4, 9, 2, 6] * 500)
    splits = [make_molecule_split(molecules, n, default_val_size(n), 2000, seed=5) for n in (50, 200, 1000)]
    for split in splits[1:]:
        np.testing.assert_array_equal(split.test, splits[0].test)
    same_val = [make_molecule_split(molecules, n, 100, 2000, seed=5).val for n in (50, 200, 1000)]
    assert all(np.array_equal(val, same_val[0]) for val in same_val)  # models of a learning curve: one selection set
    nested = [make_molecule_split(molecules, n, 100, 2000, seed=5).train for n in (50, 200, 1000)]
    assert set(nested[0]) <= set(nested[1]) <= set(nested[2])  # with one validation size
    assert not np.array_equal(make_molecule_split(molecules, 50, 100, 2000, seed=6).test, splits[0].test)


def test_molecule_split_shrinks_the_test_set_to_what_is_left_or_fails_clearly():
    molecules = molecules_of([10] * 10)
    split = make_molecule_split(molecules, 40, 30, 1000, seed=0)
    assert len(split.test) == 30  # three whole molecules fit beside train + val
    with pytest.raises(ValueError, match="cannot hold train=50 \\+ val=45 and a test set of whole molecules"):
        make_molecule_split(molecules, 50, 45, 10, seed=0)


def test_prepare_ani1x_by_molecule_keeps_formula_groups_out_of_train(tmp_path):
    """The small ANI-1x-like file has no 'smiles' datasets: its formula groups are the molecules."""
    metadata = prepare_dataset(Ani1xSource(ANI1X_SMALL), tmp_path / "ds", 10, 10, 16, 1, split_by="molecule")
    assert metadata["split_by"] == "molecule"
    indices = json.loads((tmp_path / "ds/split_indices.json").read_text())
    source = Ani1xSource(ANI1X_SMALL)
    source.count()
    groups = source.molecule_ids()
    test_groups = set(groups[indices["test"]])
    assert test_groups and not test_groups & set(groups[indices["train"] + indices["val"]])
    assert metadata["split_molecules"]["test"] == len(test_groups) and len(indices["test"]) >= 16


def test_split_by_molecule_needs_a_format_with_molecule_identities(tmp_path):
    with pytest.raises(ValueError, match="rmd17 format has no molecule identity"):
        prepare_dataset(Rmd17Source(ETHANOL), tmp_path / "ds", 5, 5, 5, 0, split_by="molecule")
    assert not (tmp_path / "ds").exists()


def test_prepare_data_cli_records_the_split_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts/prepare_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for mode in ("conformation", "molecule"):
        out = tmp_path / mode
        arguments = [
            "ani1x", "--src", str(ANI1X_SMALL), "--out", str(out), "--train-size", "8", "--val-size", "8",
            "--test-size", "16", "--self-energies", "none",
        ]  # fmt: skip
        assert script.main([*arguments, *(["--split-by", mode] if mode == "molecule" else [])]) == 0
        assert json.loads((out / "metadata.json").read_text())["split_by"] == mode


def test_unseen_conformations_are_of_training_molecules_and_in_no_other_split():
    molecules = molecules_of([4, 9, 2, 6, 1] * 300)
    plain = make_molecule_split(molecules, 200, 200, 500, seed=3)
    split = make_molecule_split(molecules, 200, 200, 500, seed=3, test_conformations=100)
    np.testing.assert_array_equal(split.test, plain.test)  # the unseen-molecule test set is unchanged
    assert split.sizes() == {"train": 200, "val": 200, "test": len(plain.test), "test_conformations": 100}
    others = np.concatenate([split.train, split.val, split.test])
    assert not set(split.test_conformations) & set(others)
    conformation_molecules = molecules[split.test_conformations]
    assert set(conformation_molecules) <= set(molecules[split.train])
    assert len(np.unique(conformation_molecules)) == len(conformation_molecules)  # one per molecule
    assert plain.test_conformations is None and "test_conformations" not in plain.sizes()


def test_unseen_conformations_grow_with_the_training_set_and_are_capped():
    molecules = molecules_of([5, 8, 3, 6] * 400)
    small, large = (make_molecule_split(molecules, n, 100, 500, seed=1, test_conformations=10_000) for n in (50, 400))
    assert set(small.train) <= set(large.train)
    assert set(small.test_conformations) <= set(large.test_conformations)
    assert len(small.test_conformations) == len(np.unique(molecules[small.train]))  # uncapped: every molecule
    capped = make_molecule_split(molecules, 400, 100, 500, seed=1, test_conformations=20)
    assert len(capped.test_conformations) == 20 and set(capped.test_conformations) <= set(large.test_conformations)


def test_prepare_writes_the_unseen_conformation_split_and_the_cli_rejects_it_without_a_molecule_split(tmp_path):
    metadata = prepare_dataset(
        Ani1xSource(ANI1X_SMALL), tmp_path / "ds", 10, 10, 16, 1, split_by="molecule", test_conformations=8
    )
    indices = json.loads((tmp_path / "ds/split_indices.json").read_text())
    size = metadata["split_sizes"]["test_conformations"]
    assert 1 <= size <= 8 and len(indices["test_conformations"]) == size
    assert metadata["split_molecules"]["test_conformations"] == size
    assert (tmp_path / "ds/test_conformations/data.lmdb").is_file()
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts/prepare_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    arguments = ["ani1x", "--src", str(ANI1X_SMALL), "--out", str(tmp_path / "c"), "--train-size", "8",
                 "--val-size", "8", "--test-size", "16", "--test-conformations", "4"]  # fmt: skip
    assert script.main(arguments) == 2
    assert not (tmp_path / "c").exists()
