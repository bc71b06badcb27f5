"""write_sgdml files read back through the sGDML reader with the same frames, in kcal/mol and Å."""

from __future__ import annotations

import numpy as np
import pytest

from piwsl.data.formats import SgdmlSource
from piwsl.datagen.sgdml import write_sgdml


def test_written_frames_read_back_with_and_without_forces(tmp_path):
    rng = np.random.default_rng(0)
    numbers, coords = np.array([8, 1, 1]), rng.normal(size=(4, 3, 3))
    energies, forces = rng.normal(size=4) - 47000, rng.normal(size=(4, 3, 3))
    write_sgdml(tmp_path / "f.npz", numbers, coords, energies, forces, "water", "test", source_frames=np.arange(4))
    write_sgdml(tmp_path / "e.npz", numbers, coords, energies, None, "water", "test")
    archive = np.load(tmp_path / "f.npz")
    assert str(archive["name"]) == "water" and str(archive["e_unit"]) == "kcal/mol" and archive["z"].dtype == np.uint8
    np.testing.assert_array_equal(archive["source_frames"], np.arange(4))
    for name, force_key in (("f.npz", "F"), ("e.npz", None)):
        source = SgdmlSource(tmp_path / name, force_key=force_key)
        assert source.count() == 4
        for index, structure in source.records():
            np.testing.assert_array_equal(structure.positions, coords[index])
            assert structure.energy == energies[index]
            if force_key:
                np.testing.assert_array_equal(structure.forces, forces[index])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz", "f.npz"]  # no temporary files left


def test_energies_must_match_the_frames(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.npz: 3 energies for 4 frames"):
        write_sgdml(tmp_path / "bad.npz", [1, 1], np.zeros((4, 2, 3)), np.zeros(3), None, "h2", "test")
    assert not list(tmp_path.iterdir())
