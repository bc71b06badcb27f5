"""sGDML files written by piwsl read back through the sGDML reader with the same frames, in kcal/mol and Å."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from piwsl.data.formats import SgdmlSource
from piwsl.datagen.sgdml import write_sgdml

ROOT = Path(__file__).resolve().parents[1]


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


def load_generator_script():
    spec = importlib.util.spec_from_file_location(
        "generate_reference_data", ROOT / "scripts/generate_reference_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_md_cli_sgdml_layout_holds_the_rmd17_layout_arrays(tmp_path, capsys):
    pytest.importorskip("tblite")
    pytest.importorskip("rdkit")
    tiny = ["--frames", "3", "--stride", "2", "--equilibration-steps", "4", "--relax-steps", "5"]
    script = load_generator_script()
    for layout in ("rmd17", "sgdml"):
        script.main(
            ["md", "--smiles", "O", "--name", "water", *tiny, "--layout", layout, "--out", str(tmp_path / layout)]
        )
    assert "sgdml: 3 frames x 3 atoms" in capsys.readouterr().out
    rmd17, sgdml = np.load(tmp_path / "rmd17"), np.load(tmp_path / "sgdml")
    for rmd17_key, sgdml_key in (("nuclear_charges", "z"), ("coords", "R"), ("energies", "E"), ("forces", "F")):
        np.testing.assert_array_equal(rmd17[rmd17_key], sgdml[sgdml_key])
    assert str(sgdml["name"]) == "water" and str(sgdml["theory"]) == str(rmd17["method"])
    assert str(sgdml["smiles"]) == "O" and float(sgdml["temperature_K"]) == float(rmd17["temperature_K"])
    assert "units" not in sgdml.files and str(sgdml["r_unit"]) == "Ang"
    assert SgdmlSource(tmp_path / "sgdml").count() == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rmd17", "sgdml"]  # no temporary directory left
