"""Bad input fails with a message naming the file and the record, and leaves no dataset behind."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.io import read, write

from piwsl.data.formats import DataFormatError, read_rmd17, read_xsf
from piwsl.data.prepare import prepare_dataset
from piwsl.data.units import HARTREE_TO_KCAL_PER_MOL, energy_magnitude_bound

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests/data"
ETHANOL_NPZ = DATA / "rmd17_ethanol_gfn2xtb.npz"
ANI1X_H5 = DATA / "ani1x_like_small.h5"
TIO2_XSF = DATA / "tio2_xsf"
ETHANOL_EXTXYZ = DATA / "ethanol_gfn2xtb.extxyz"

spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts/prepare_data.py")
CLI = importlib.util.module_from_spec(spec)
spec.loader.exec_module(CLI)


def prepare(*argv: str | Path) -> dict:
    args = CLI.get_parser().parse_args([str(a) for a in argv])
    return CLI.run(args)


def small_split(fmt: str, src: Path, out: Path, *extra: str) -> dict:
    return prepare(fmt, "--src", src, "--out", out, "--train-size", 4, "--val-size", 4, *extra)


def edited_npz(tmp_path: Path, **changes: np.ndarray | None) -> Path:
    """A copy of the ethanol npz with keys replaced (or removed when ``None``)."""
    arrays = dict(np.load(ETHANOL_NPZ))
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp_path / "edited.npz"
    np.savez(path, **arrays)
    return path


def edited_h5(tmp_path: Path, edit) -> tuple[Path, str]:
    """A copy of the ANI-1x-like file after ``edit(group)`` on its second group; returns path and group name."""
    path = tmp_path / "edited.h5"
    shutil.copy(ANI1X_H5, path)
    with h5py.File(path, "r+") as h5:
        name = sorted(h5)[1]
        edit(h5[name])
    return path, name


def replace_dataset(group: h5py.Group, key: str, values: np.ndarray) -> None:
    del group[key]
    group.create_dataset(key, data=values)


def test_rmd17_missing_key_and_shape_mismatch(tmp_path):
    with pytest.raises(DataFormatError, match=r"edited\.npz: missing key\(s\) \['forces'\]"):
        small_split("rmd17", edited_npz(tmp_path, forces=None), tmp_path / "out")
    forces = np.load(ETHANOL_NPZ)["forces"][:, :8]
    with pytest.raises(DataFormatError, match=r"edited\.npz: forces has shape \(60, 8, 3\), expected \(60, 9, 3\)"):
        small_split("rmd17", edited_npz(tmp_path, forces=forces), tmp_path / "out")


def test_rmd17_nan_label_names_the_frame(tmp_path):
    energies = np.load(ETHANOL_NPZ)["energies"].copy()
    energies[17] = np.nan
    with pytest.raises(DataFormatError, match=r"edited\.npz\[17\]: energy contains NaN"):
        small_split("rmd17", edited_npz(tmp_path, energies=energies), tmp_path / "out")
    with pytest.raises(DataFormatError, match=r"edited\.npz\[17\]: energy contains NaN"):
        read_rmd17(tmp_path / "edited.npz")


def test_unknown_element_is_rejected(tmp_path):
    charges = np.load(ETHANOL_NPZ)["nuclear_charges"].copy()
    charges[3] = 119
    with pytest.raises(DataFormatError, match=r"edited\.npz\[\d+\]: unknown element.*\[119\]"):
        small_split("rmd17", edited_npz(tmp_path, nuclear_charges=charges), tmp_path / "out")
    path, name = edited_h5(tmp_path, lambda g: replace_dataset(g, "atomic_numbers", np.zeros_like(g["atomic_numbers"])))
    with pytest.raises(DataFormatError, match=rf"edited\.h5:/{name}: unknown element.*\[0\]"):
        small_split("ani1x", path, tmp_path / "out")


def test_ani1x_missing_dataset_shape_mismatch_and_inf(tmp_path):
    path, name = edited_h5(tmp_path, lambda g: g.__delitem__("wb97x_dz.forces"))
    with pytest.raises(DataFormatError, match=rf"edited\.h5:/{name}: missing dataset\(s\) \['wb97x_dz.forces'\]"):
        small_split("ani1x", path, tmp_path / "out")
    small_split("ani1x", path, tmp_path / "energy_only", "--force-key", "none", "--self-energies", "none")

    path, name = edited_h5(tmp_path, lambda g: replace_dataset(g, "wb97x_dz.energy", g["wb97x_dz.energy"][:-1]))
    with pytest.raises(DataFormatError, match=rf"edited\.h5:/{name}: wb97x_dz.energy has shape"):
        small_split("ani1x", path, tmp_path / "out")

    def infinite(group: h5py.Group) -> None:
        group["wb97x_dz.energy"][5] = np.inf

    path, name = edited_h5(tmp_path, infinite)
    with pytest.raises(DataFormatError, match=rf"edited\.h5:/{name}\[5\]: wb97x_dz.energy contains Inf"):
        small_split("ani1x", path, tmp_path / "out")


def test_energies_in_kcal_per_mol_read_as_hartree_are_caught(tmp_path):
    def rescale(group: h5py.Group) -> None:
        group["wb97x_dz.energy"][...] = group["wb97x_dz.energy"][...] * HARTREE_TO_KCAL_PER_MOL

    path, name = edited_h5(tmp_path, rescale)
    with pytest.raises(DataFormatError, match=rf"edited\.h5:/{name}\[\d+\]: energy .* probably not in hartree"):
        small_split("ani1x", path, tmp_path / "out", "--test-size", "56")  # every record
    assert not (tmp_path / "out").exists()
    metadata = small_split("ani1x", path, tmp_path / "out", "--skip-unit-check", "--self-energies", "none")
    assert metadata["unit_check"] is False


def test_energy_bound_admits_real_total_energies():
    # All-electron energies (Ha) of free atoms, and real rMD17 aspirin (PBE/def2-SVP) in kcal/mol.
    for z, energy in [(1, -0.5), (6, -37.85), (8, -75.07), (22, -849.0), (82, -20_900.0)]:
        assert 1.5 * abs(energy) * HARTREE_TO_KCAL_PER_MOL < energy_magnitude_bound(np.array([z]))
    aspirin = np.array([6] * 9 + [8] * 4 + [1] * 8)
    assert 406_000 < energy_magnitude_bound(aspirin) < 406_000 * 627.5 / 23.06  # eV read as Ha would fail
    # All-electron totals (about the free atoms' sum) in kcal/mol read as Ha, or in eV read as Ha, fail.
    free_atoms = {1: -0.5, 6: -37.85, 7: -54.59, 8: -75.07}
    for numbers in (aspirin, np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]), np.array([7, 1, 1, 1])):
        total = sum(free_atoms[int(z)] for z in numbers) * HARTREE_TO_KCAL_PER_MOL
        assert abs(total) * 27.211386 > energy_magnitude_bound(numbers) > abs(total)


def test_xsf_errors_name_the_file(tmp_path):
    original = sorted(TIO2_XSF.glob("*.xsf"))[0]
    text = original.read_text()
    source = tmp_path / "xsf"
    source.mkdir()
    broken = source / "broken.xsf"
    broken.write_text("\n".join(line for line in text.splitlines() if "total energy" not in line))
    with pytest.raises(DataFormatError, match=r"broken\.xsf: no '# total energy = \.\.\. eV' line"):
        read_xsf(broken)
    lines = text.splitlines()
    atom = next(i for i, line in enumerate(lines) if line.startswith("Ti "))
    lines[atom] = lines[atom].rsplit(maxsplit=1)[0] + " nan"
    broken.write_text("\n".join(lines))
    for copy in sorted(TIO2_XSF.glob("*.xsf"))[1:]:
        shutil.copy(copy, source)
    with pytest.raises(DataFormatError, match=r"broken\.xsf: forces contains NaN"):
        small_split("tio2", source, tmp_path / "out")
    lines[atom] = "Xx" + lines[atom][2:]
    broken.write_text("\n".join(lines))
    with pytest.raises(DataFormatError, match=rf"broken\.xsf:{atom + 1}: unknown element 'Xx'"):
        read_xsf(broken)


def test_extxyz_without_labels_and_mixed_forces(tmp_path):
    frames = read(ETHANOL_EXTXYZ, index=":")
    unlabelled = frames[2].copy()  # a copy has no calculator: no energy, no forces
    write(tmp_path / "missing.extxyz", [*frames[:2], unlabelled, *frames[3:]])
    with pytest.raises(DataFormatError, match=r"missing\.extxyz\[2\]: no scalar energy 'energy'"):
        small_split("ase", tmp_path / "missing.extxyz", tmp_path / "out")
    energy_only = frames[5].copy()
    energy_only.info["energy"] = frames[5].get_potential_energy()
    write(tmp_path / "mixed.extxyz", [*frames[:5], energy_only, *frames[6:]])
    with pytest.raises(DataFormatError, match=r"mixed\.extxyz\[5\]: no forces 'forces'"):
        small_split("ase", tmp_path / "mixed.extxyz", tmp_path / "out", "--test-size", "0")


def test_self_energies_must_cover_every_element(tmp_path):
    table = tmp_path / "self_energies.json"
    table.write_text(json.dumps({"H": -0.5, "C": -37.8, "O": -75.0}))
    with pytest.raises(DataFormatError, match=r"edited|ani1x_like_small\.h5:/\w+\[\d+\]: no self energy for .*'N'"):
        small_split("ani1x", ANI1X_H5, tmp_path / "out", "--self-energies", table)
    table.write_text(json.dumps({"H": -0.5, "Qq": 1.0}))
    with pytest.raises(DataFormatError, match=r"self_energies\.json: unknown element 'Qq'"):
        small_split("ani1x", ANI1X_H5, tmp_path / "out", "--self-energies", table)


def test_failure_leaves_no_dataset_and_keeps_the_previous_one(tmp_path):
    out = tmp_path / "ethanol"
    energies = np.load(ETHANOL_NPZ)["energies"].copy()
    energies[59] = -1e9  # the last frame, beyond any total energy: the LMDBs are half written when it fails
    bad = edited_npz(tmp_path, energies=energies)
    with pytest.raises(DataFormatError, match=r"edited\.npz\[59\]: energy -1e\+09 kcal/mol"):
        small_split("rmd17", bad, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.npz"]  # no dataset, no staging leftovers

    good = prepare_dataset(read_rmd17(ETHANOL_NPZ), out, 4, 4, 8, 0, ETHANOL_NPZ, "rmd17")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataFormatError):
        small_split("rmd17", bad, out, "--overwrite")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and json.loads((out / "metadata.json").read_text()) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.npz", "ethanol"]


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    code = CLI.main(["rmd17", "--src", str(tmp_path / "absent.npz"), "--out", str(tmp_path / "o"), "--train-size", "4"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'absent.npz'}: not found"
    code = CLI.main(
        ["tio2", "--src", str(TIO2_XSF), "--out", str(tmp_path / "o"), "--train-size", "4", "--force-key", "x"]
    )
    assert code == 2 and "tio2 files have fixed label keys" in capsys.readouterr().err


def test_records_must_all_have_forces_or_none(tmp_path):
    structures = read_rmd17(ETHANOL_NPZ)
    structures[30] = replace(structures[30], forces=None)
    with pytest.raises(DataFormatError, match=r"rmd17_ethanol_gfn2xtb\.npz\[30\]: has no forces, unlike the records"):
        prepare_dataset(structures, tmp_path / "out", 10, 10, 40, 0, ETHANOL_NPZ, "rmd17")
