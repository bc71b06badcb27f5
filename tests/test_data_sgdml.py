"""The sGDML npz format of MD17/MD22 (keys z, R, E, F) prepares like rMD17, and bad files fail in one line."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fairchem.core.datasets import LmdbDataset

from piwsl.data.formats import DataFormatError, SgdmlSource

ROOT = Path(__file__).resolve().parents[1]
ETHANOL_NPZ = ROOT / "tests/data/rmd17_ethanol_gfn2xtb.npz"

spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts/prepare_data.py")
CLI = importlib.util.module_from_spec(spec)
spec.loader.exec_module(CLI)


def prepare(fmt: str, src: Path, out: Path, *extra: str) -> dict:
    args = CLI.get_parser().parse_args(
        [fmt, "--src", str(src), "--out", str(out), "--train-size", "8", "--val-size", "8", *extra]
    )
    return CLI.run(args)


def sgdml_npz(path: Path, **changes: np.ndarray | None) -> Path:
    """The ethanol rMD17 test file rewritten as sGDML writes MD17/MD22 files: uint8 ``z``, ``E`` of shape (M, 1),
    string metadata; ``changes`` replace keys (or remove them when ``None``)."""
    rmd17 = np.load(ETHANOL_NPZ)
    arrays = {
        "z": rmd17["nuclear_charges"].astype(np.uint8),
        "R": rmd17["coords"],
        "E": rmd17["energies"].reshape(-1, 1),
        "F": rmd17["forces"],
        "name": np.array("ethanol"),
        "theory": np.array("GFN2-xTB"),
        "type": np.array("d"),
        "r_unit": np.array("Ang"),
        "e_unit": np.array("kcal/mol"),
    }
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


def split_records(out: Path) -> dict[str, list]:
    records = {}
    for name in ("train", "val", "test"):
        dataset = LmdbDataset({"src": str(out / name)})
        records[name] = [dataset[i] for i in range(len(dataset))]
    return records


@pytest.mark.parametrize("fmt", ["sgdml", "md22", "md17"])
def test_sgdml_file_prepares_the_same_records_as_the_rmd17_file(tmp_path, fmt):
    src = sgdml_npz(tmp_path / "ethanol_sgdml.npz")
    metadata = prepare(fmt, src, tmp_path / "sgdml")
    reference = prepare("rmd17", ETHANOL_NPZ, tmp_path / "rmd17")
    assert metadata["format"] == "sgdml"
    assert metadata["reader"] | {"energy_key": "energies", "force_key": "forces"} == reference["reader"]
    assert metadata["split_sizes"] == reference["split_sizes"] == {"train": 8, "val": 8, "test": 44}
    assert metadata["normalizers"] == reference["normalizers"]
    assert metadata["element_references"]["method"] == "none"
    ours, theirs = split_records(tmp_path / "sgdml"), split_records(tmp_path / "rmd17")
    for name in ("train", "val", "test"):
        for mine, expected in zip(ours[name], theirs[name], strict=True):
            for key in ("atomic_numbers", "pos", "forces", "energy"):
                np.testing.assert_array_equal(np.asarray(getattr(mine, key)), np.asarray(getattr(expected, key)))


def test_sgdml_energies_of_shape_frames_and_energy_only_reading(tmp_path):
    rmd17 = np.load(ETHANOL_NPZ)
    src = sgdml_npz(tmp_path / "flat.npz", E=rmd17["energies"], F=None)
    source = SgdmlSource(src, force_key=None)
    assert source.count() == 60
    structures = [structure for _, structure in source.records()]
    assert [s.energy for s in structures] == rmd17["energies"].tolist()
    assert all(s.forces is None for s in structures)
    assert structures[7].source == f"{src}[7]"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"F": None}, r"bad\.npz: missing key\(s\) \['F'\]; the file has \['E', 'R', "),
        ({"R": np.zeros((60, 8, 3))}, r"bad\.npz: R has shape \(60, 8, 3\), expected \(M, 9, 3\) with 9 atoms as in z"),
        ({"z": np.ones((1, 9))}, r"bad\.npz: z has shape \(1, 9\), expected \(N,\)"),
        ({"E": np.zeros((60, 2))}, r"bad\.npz: E has shape \(60, 2\), expected \(60,\) or \(60, 1\) like R"),
        ({"E": np.zeros(59)}, r"bad\.npz: E has shape \(59,\), expected \(60,\)"),
        ({"F": np.zeros((60, 9, 2))}, r"bad\.npz: F has shape \(60, 9, 2\), expected \(60, 9, 3\)"),
    ],
)
def test_bad_sgdml_keys_and_shapes_name_the_file_and_key(tmp_path, changes, message):
    with pytest.raises(DataFormatError, match=message):
        prepare("md22", sgdml_npz(tmp_path / "bad.npz", **changes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nan_energy_names_the_frame(tmp_path):
    energies = np.load(ETHANOL_NPZ)["energies"].reshape(-1, 1).copy()
    energies[5, 0] = np.nan
    with pytest.raises(DataFormatError, match=r"bad\.npz\[5\]: energy contains NaN"):
        prepare("sgdml", sgdml_npz(tmp_path / "bad.npz", E=energies), tmp_path / "out")


def test_wrong_npz_layout_names_the_right_format(tmp_path, capsys):
    code = CLI.main(["md22", "--src", str(ETHANOL_NPZ), "--out", str(tmp_path / "o"), "--train-size", "4"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "missing key(s) ['z', 'R', 'E', 'F']" in error
    assert "it looks like an rmd17 npz: use format rmd17" in error
    code = CLI.main(
        ["rmd17", "--src", str(sgdml_npz(tmp_path / "s.npz")), "--out", str(tmp_path / "o")] + ["--train-size", "4"]
    )
    assert code == 2 and "it looks like an sgdml npz: use format sgdml" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_help_lists_the_sgdml_format_and_its_aliases(capsys):
    with pytest.raises(SystemExit):
        CLI.get_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for name in ("sgdml", "md17", "md22"):
        assert name in text
    assert "sgdml 'E'" in text and "sgdml 'F'" in text


def test_bundled_md22_size_set_prepares_with_42_atoms(tmp_path):
    src = ROOT / "data/md22_ac_ala3_nhme_gfn2xtb_500K.npz"
    metadata = prepare("md22", src, tmp_path / "md22", "--test-size", "16")
    archive = np.load(src)
    assert str(archive["name"]) == "Ac-Ala3-NHMe" and archive["R"].shape == (1500, 42, 3)
    assert metadata["elements"] == ["H", "C", "N", "O"] and metadata["split_sizes"]["test"] == 16
    assert -41_000 < metadata["train_statistics"]["energy_mean"] < -40_000  # GFN2-xTB total, kcal/mol
    assert 10 < metadata["train_statistics"]["force_rms"] < 60  # kcal/mol/Å at 500 K
    test = split_records(tmp_path / "md22")["test"]
    assert all(int(data.natoms) == 42 for data in test)


def test_bundled_dft_sets_are_frames_of_their_source_trajectory(tmp_path):
    directory = ROOT / "data/dft/ethanol_wb97x_631gs"
    provenance = json.loads((directory / "provenance.json").read_text())
    source = np.load(ROOT / provenance["source"])
    assert provenance["pyscf_version"] and provenance["theory"] == "wb97x/6-31g*"
    train, test = np.load(directory / "train.npz"), np.load(directory / "test.npz")
    assert not set(train["source_frames"].tolist()) & set(test["source_frames"].tolist())
    for archive in (train, test):
        np.testing.assert_array_equal(archive["R"], source["coords"][archive["source_frames"]])
        np.testing.assert_array_equal(archive["z"], source["nuclear_charges"])
    assert "F" not in train.files and test["F"].shape == test["R"].shape
    # ωB97X/6-31G* ethanol is about -154.97 Ha; the GFN2-xTB energies of the same frames are not.
    assert np.all(np.abs(test["E"] / 627.509474 + 154.97) < 0.05)
    metadata = prepare("sgdml", directory / "test.npz", tmp_path / "test")
    assert metadata["train_has_forces"]


def test_test_split_from_another_file_beside_an_energy_only_training_file(tmp_path):
    train_src = sgdml_npz(tmp_path / "train.npz", R=np.load(ETHANOL_NPZ)["coords"][:40], F=None,
                          E=np.load(ETHANOL_NPZ)["energies"][:40])  # fmt: skip
    test_src = sgdml_npz(tmp_path / "test.npz", R=np.load(ETHANOL_NPZ)["coords"][40:],
                         E=np.load(ETHANOL_NPZ)["energies"][40:], F=np.load(ETHANOL_NPZ)["forces"][40:])  # fmt: skip
    common = ("--force-key", "none", "--test-src", str(test_src), "--self-energies", "fit")
    small = prepare("sgdml", train_src, tmp_path / "n8", *common)
    large = prepare("sgdml", train_src, tmp_path / "n20", *common[:4], "--train-size", "20", "--test-size", "20")
    assert small["split_sizes"] == {"train": 8, "val": 8, "test": 20} and small["split_by"] == "test_file"
    assert small["test_source_sha256"] == large["test_source_sha256"] and small["test_has_forces"]
    assert not small["has_forces"] and small["test_source"] == str(test_src.resolve())
    indices = {n: json.loads((tmp_path / n / "split_indices.json").read_text()) for n in ("n8", "n20")}
    assert indices["n8"]["val"] == indices["n20"]["val"]  # drawn first: the same for every N_train
    assert set(indices["n8"]["train"]) <= set(indices["n20"]["train"])
    assert not set(indices["n20"]["train"]) & set(indices["n20"]["val"])
    records = split_records(tmp_path / "n8")
    assert all("forces" not in r for r in records["train"] + records["val"])
    test_energies = np.load(ETHANOL_NPZ)["energies"][40:]
    # One composition: the fitted references add up to the mean training energy, subtracted from every split.
    offset = test_energies[0] - float(records["test"][0].energy)
    np.testing.assert_allclose([float(r.energy) for r in records["test"]], test_energies - offset, atol=1e-2)
    np.testing.assert_allclose(records["test"][3].forces.numpy(), np.load(ETHANOL_NPZ)["forces"][43], atol=1e-4)


@pytest.mark.parametrize(
    "extra, train_without_oxygen, message",
    [
        (("--test-size", "5"), False, "--test-size 5: --test-src .*test.npz holds 20 records, all of which are the"),
        (("--train-size", "35"), False, "40 records cannot hold train=35 \\+ val=8; lower the validation size to"),
        ((), True, "element\\(s\\) O of the --test-src file do not occur in the training"),
    ],
)
def test_test_file_mismatches_are_one_line(tmp_path, capsys, extra, train_without_oxygen, message):
    arrays = np.load(ETHANOL_NPZ)
    train_src = sgdml_npz(tmp_path / "train.npz", R=arrays["coords"][:40], E=arrays["energies"][:40], F=None)
    test_src = sgdml_npz(tmp_path / "test.npz", R=arrays["coords"][40:], E=arrays["energies"][40:],
                         F=arrays["forces"][40:])  # fmt: skip
    if train_without_oxygen:
        keep = arrays["nuclear_charges"] != 8
        sgdml_npz(train_src, z=arrays["nuclear_charges"][keep].astype(np.uint8), R=arrays["coords"][:40, keep],
                  E=arrays["energies"][:40], F=None)  # fmt: skip
    argv = ["sgdml", "--src", str(train_src), "--out", str(tmp_path / "out"), "--train-size", "8", "--val-size", "8"]
    argv += ["--force-key", "none", "--test-src", str(test_src), *extra]
    capsys.readouterr()
    assert CLI.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.strip().splitlines()) == 1
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists()


def test_self_energies_fitted_on_one_composition_subtract_the_mean_training_energy(tmp_path, caplog):
    """One molecule's frames determine only the sum of the references over its composition (rank 1)."""
    metadata = prepare("sgdml", sgdml_npz(tmp_path / "ethanol.npz"), tmp_path / "out", "--self-energies", "fit")
    references = metadata["element_references"]
    assert references["rank"] == 1 and set(references["energies"]) == {"C", "H", "O"}
    composition = {"C": 2, "H": 6, "O": 1}
    total = sum(count * references["energies"][symbol] for symbol, count in composition.items())
    train = np.load(ETHANOL_NPZ)["energies"][json.loads((tmp_path / "out/split_indices.json").read_text())["train"]]
    assert total == pytest.approx(train.mean(), abs=1e-6)
    vector = np.array(list(composition.values()), dtype=float)  # the minimum-norm solution is along the counts
    values = np.array([references["energies"][symbol] for symbol in composition])
    np.testing.assert_allclose(values, vector * train.mean() / vector.dot(vector), rtol=1e-9)
    assert "determine only 1 combination(s) of the 3 element self energies" in caplog.text
    assert metadata["train_statistics"]["energy_mean"] == pytest.approx(0.0, abs=1e-6)
