"""The reference-data generators of ``piwsl.datagen`` and their command line (tiny, real GFN2-xTB runs)."""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest
from trainer_helpers import ROOT

pytest.importorskip("tblite")
pytest.importorskip("rdkit")

from piwsl.datagen.ani1x_like import AniLikeSettings, generate_ani1x_like  # noqa: E402
from piwsl.datagen.common import InputError  # noqa: E402
from piwsl.datagen.md import MDSettings, generate_md, initial_geometry  # noqa: E402

TINY_MD = MDSettings(frames=3, stride=2, equilibration_steps=4, relax_steps=5, temperature=300.0)


def test_ani1x_like_reproduces_the_committed_small_file(tmp_path):
    """The command in the script's docstring still gives the arrays of tests/data/ani1x_like_small.h5."""
    out = tmp_path / "ani.h5"
    generate_ani1x_like(out, AniLikeSettings(max_formulas=6, conformers_per_molecule=8))
    with h5py.File(out) as new, h5py.File(ROOT / "tests/data/ani1x_like_small.h5") as committed:
        assert sorted(new) == sorted(committed)
        for formula in committed:
            for key in committed[formula]:
                np.testing.assert_array_equal(new[formula][key][()], committed[formula][key][()], err_msg=formula)


@pytest.mark.parametrize(("smiles", "g2_name"), [("O", None), (None, "H2O")])
def test_md_of_a_smiles_or_g2_molecule_writes_rmd17_arrays(tmp_path, smiles, g2_name):
    out = tmp_path / "water.npz"
    generate_md(out, "water", TINY_MD, smiles=smiles, g2_name=g2_name)
    data = np.load(out)
    assert sorted(data["nuclear_charges"].tolist()) == [1, 1, 8]
    assert data["coords"].shape == data["forces"].shape == (3, 3, 3) and data["energies"].shape == (3,)
    assert str(data["molecule"]) == "water"
    assert str(data["smiles"] if smiles else data["g2_name"]) == (smiles or g2_name)
    # Total GFN2-xTB energy of water is about -5.07 Ha = -3,180 kcal/mol.
    assert np.all(np.abs(data["energies"] + 3180.0) < 30.0)


def test_initial_geometry_names_the_closest_g2_molecule():
    with pytest.raises(InputError, match=r"CH3CH2OH"):
        initial_geometry(g2_name="CH3CH2OHH")
    with pytest.raises(InputError, match="exactly one"):
        initial_geometry(smiles="O", g2_name="H2O")


def load_script():
    """The module ``scripts/generate_reference_data.py`` (imported in-process: a subprocess costs ~20 s)."""
    path = ROOT / "scripts/generate_reference_data.py"
    spec = importlib.util.spec_from_file_location("generate_reference_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reports_a_bad_smiles_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: RDKit cannot parse SMILES 'C1CC'$"):
        load_script().main(["md", "--smiles", "C1CC", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
