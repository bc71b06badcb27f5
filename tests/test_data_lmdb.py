"""The LMDB writer: fairchem reads every record back, across commits and reopenings, and writes are atomic."""

from __future__ import annotations

import numpy as np
import pytest
from fairchem.core.datasets import LmdbDataset
from trainer_helpers import ETHANOL

from piwsl.data import lmdb_writer
from piwsl.data.formats import read_rmd17
from piwsl.data.lmdb_writer import write_lmdb


def test_records_survive_commits_and_reopenings(tmp_path, monkeypatch):
    monkeypatch.setattr(lmdb_writer, "COMMIT_EVERY", 2)
    monkeypatch.setattr(lmdb_writer, "REOPEN_EVERY", 6)
    structures = read_rmd17(ETHANOL)[:13]
    assert write_lmdb(structures, tmp_path / "db") == 13
    dataset = LmdbDataset({"src": str(tmp_path / "db")})
    assert len(dataset) == 13
    for index, structure in enumerate(structures):
        assert dataset[index].sid == index and dataset[index].energy == structure.energy
        np.testing.assert_allclose(dataset[index].pos.numpy(), structure.positions, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["data.lmdb"]


def test_a_failed_write_keeps_the_old_database(tmp_path):
    structures = read_rmd17(ETHANOL)
    write_lmdb(structures[:5], tmp_path / "db")

    def failing():
        yield from structures[:3]
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_lmdb(failing(), tmp_path / "db")
    assert len(LmdbDataset({"src": str(tmp_path / "db")})) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]
