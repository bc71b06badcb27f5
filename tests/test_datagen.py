"""The reference-data generators of ``piwsl.datagen`` and their command line (tiny, real GFN2-xTB runs)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import h5py
import numpy as np
import pytest
from trainer_helpers import ROOT

pytest.importorskip("tblite")
pytest.importorskip("rdkit")
pytest.importorskip("selfies")

import selfies  # noqa: E402
from rdkit import Chem  # noqa: E402

from piwsl.data.ani1x import Ani1xSource  # noqa: E402
from piwsl.datagen import many_molecules  # noqa: E402
from piwsl.datagen.ani1x_like import AniLikeSettings, generate_ani1x_like  # noqa: E402
from piwsl.datagen.common import HARTREE_TO_EV, InputError  # noqa: E402
from piwsl.datagen.many_molecules import (  # noqa: E402
    ManyMoleculeSettings,
    generate_many_molecules,
    label_molecule,
    rejection_reason,
    sample_molecules,
)
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


TINY_SET = ManyMoleculeSettings(molecules=3, conformers_per_molecule=2, base_conformers=1, seed=3)


def h5_arrays(path):
    """Every dataset of an HDF5 file by path, and the root attributes except the command line."""
    arrays = {}
    with h5py.File(path) as h5:
        h5.visititems(lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
        provenance = json.loads(h5.attrs["provenance"])
    return arrays, provenance


def test_rejection_reasons_keep_closed_shell_neutral_cho_molecules():
    reasons = {
        smiles: rejection_reason(Chem.MolFromSmiles(smiles), 1, 8)
        for smiles in (
            "CCO",
            "c1ccncc1",
            "OO",
            "O=O",
            "[CH3]",
            "[NH4+]",
            "C.C",
            "C1#CC1",
            "C1=C=CC1",
            "CCCCCCCCC",
            "CF",
        )
    }
    assert reasons == {
        "CCO": None,
        "c1ccncc1": None,
        "OO": "O-O bond",
        "O=O": "O-O bond",
        "[CH3]": "open shell",
        "[NH4+]": "charged",
        "C.C": "several fragments",
        "C1#CC1": "triple bond in a ring",
        "C1=C=CC1": "cumulated double bonds in a ring",
        "CCCCCCCCC": "heavy-atom count",
        "CF": "element",
    }


def test_sampled_molecules_are_distinct_canonical_smiles_and_a_longer_list_extends_a_shorter_one():
    settings = ManyMoleculeSettings(molecules=400, seed=1)
    candidates = sample_molecules(settings)
    smiles = [c.smiles for c in candidates]
    assert len(set(smiles)) == 400
    assert all(Chem.MolToSmiles(Chem.MolFromSmiles(s)) == s for s in smiles)
    assert all(Chem.MolToSmiles(Chem.MolFromSmiles(selfies.decoder(c.selfies))) == c.smiles for c in candidates)
    heavy = [Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles]
    assert min(heavy) >= 1 and max(heavy) == 8
    shorter = sample_molecules(dataclasses.replace(settings, molecules=50))
    assert shorter == candidates[:50]


def test_many_molecules_layout_is_read_by_the_ani1x_reader_with_molecule_identities(tmp_path):
    out = tmp_path / "many.h5"
    generate_many_molecules(out, TINY_SET, workers=1, chunk_size=2)
    arrays, provenance = h5_arrays(out)
    smiles = [s.decode() for s in arrays["molecules/smiles"]]
    assert len(set(smiles)) == 3 and provenance["conformations"] == 6
    assert provenance["settings"]["seed"] == 3 and {"tblite", "rdkit", "selfies"} <= set(provenance["versions"])
    assert not (tmp_path / "many.h5.work").exists()
    source = Ani1xSource(out)
    assert source.count() == 6
    records = [structure for _, structure in source.records()]
    assert all(r.forces.shape == r.positions.shape and np.isfinite(r.energy) for r in records)
    molecule_ids = source.molecule_ids()
    assert np.unique(molecule_ids).size == 3 and np.bincount(molecule_ids).tolist() == [2, 2, 2]
    for formula in (name for name in arrays if name.endswith("/smiles") and not name.startswith("molecules")):
        assert {s.decode() for s in arrays[formula]} <= set(smiles)


def test_many_molecules_resumes_after_a_stop_with_the_result_of_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = tmp_path / "whole.h5"
    generate_many_molecules(whole, TINY_SET, workers=2, chunk_size=1)
    resumed = tmp_path / "resumed.h5"
    message = generate_many_molecules(resumed, TINY_SET, workers=1, chunk_size=1, stop_after_chunks=1)
    assert "2 of 3 chunks left" in message and not resumed.exists()
    assert sorted(p.name for p in (tmp_path / "resumed.h5.work").iterdir()) == ["chunk_00000.npz", "manifest.json"]
    with pytest.raises(InputError, match="other settings .*conformers_per_molecule"):
        generate_many_molecules(resumed, dataclasses.replace(TINY_SET, conformers_per_molecule=3), chunk_size=1)
    (tmp_path / "resumed.h5.work/.chunk_00001.npz.x.tmp").write_bytes(b"half a chunk")  # a kill while writing
    labelled = []
    original = many_molecules.label_molecule
    monkeypatch.setattr(
        many_molecules, "label_molecule", lambda index, *rest: labelled.append(index) or original(index, *rest)
    )
    generate_many_molecules(resumed, TINY_SET, workers=1, chunk_size=1)
    assert labelled == [1, 2]  # the finished chunk (molecule 0) is not redone
    assert not (tmp_path / "resumed.h5.work").exists()
    (whole_arrays, whole_provenance), (resumed_arrays, resumed_provenance) = h5_arrays(whole), h5_arrays(resumed)
    assert whole_arrays.keys() == resumed_arrays.keys()
    for name, array in whole_arrays.items():
        np.testing.assert_array_equal(array, resumed_arrays[name], err_msg=name)
    assert whole_provenance == resumed_provenance


def test_force_guard_redraws_rattles_with_pinched_bonds():
    """Without the guard, rattles of 0.06 Angstrom give force components above 6 eV/Angstrom on ethanol."""
    settings = ManyMoleculeSettings(
        molecules=1, conformers_per_molecule=4, base_conformers=1, rattle_sigmas=(0.06,), max_force=6.0
    )
    guarded = label_molecule(0, "CCO", settings)
    unguarded = label_molecule(0, "CCO", dataclasses.replace(settings, max_force=None))
    assert np.abs(unguarded.forces).max() * HARTREE_TO_EV > 6.0 and unguarded.force_redraws == 0
    assert guarded.status == "ok" and guarded.force_redraws > 0
    assert np.abs(guarded.forces).max() * HARTREE_TO_EV <= 6.0
