"""Each format round-trips through scripts/prepare_data.py into fairchem LMDBs (real GFN-xTB data).

Reference values are read here independently of the readers (h5py, numpy, ASE, the XSF text).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import units
from ase.io import read, write
from fairchem.core.datasets import LmdbDataset

from piwsl.data.ani1x import Ani1xSource

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests/data"
ETHANOL_NPZ = DATA / "rmd17_ethanol_gfn2xtb.npz"
ANI1X_H5 = DATA / "ani1x_like_small.h5"
TIO2_XSF = DATA / "tio2_xsf"
TIO2_EXTXYZ = DATA / "tio2_gfn1xtb.extxyz"
ETHANOL_EXTXYZ = DATA / "ethanol_gfn2xtb.extxyz"
HA = 627.509474
EV = 23.060548


def load_cli():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts/prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = load_cli()


def prepare(*argv: str | Path) -> dict:
    """Run the CLI's ``run`` and return the written metadata.json."""
    args = CLI.get_parser().parse_args([str(a) for a in argv])
    CLI.run(args)
    return json.loads((args.out / "metadata.json").read_text())


def split_records(out: Path) -> dict[str, list]:
    """Every split's records as fairchem's LmdbDataset returns them, with their source indices."""
    indices = json.loads((out / "split_indices.json").read_text())
    records = {}
    for name in ("train", "val", "test"):
        dataset = LmdbDataset({"src": str(out / name)})
        assert len(dataset) == len(indices[name])
        records[name] = list(zip(indices[name], (dataset[i] for i in range(len(dataset))), strict=True))
    return records


def all_records(out: Path) -> list:
    return [item for items in split_records(out).values() for item in items]


def ani1x_reference(path: Path) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    """(numbers, coordinates Å, energy Ha, forces Ha/Å) of every conformer, groups sorted by name."""
    rows = []
    with h5py.File(path) as h5:
        for name in sorted(h5):
            group = h5[name]
            for m in range(group["coordinates"].shape[0]):
                rows.append(
                    (
                        group["atomic_numbers"][()],
                        group["coordinates"][m],
                        float(group["wb97x_dz.energy"][m]),
                        group["wb97x_dz.forces"][m],
                    )
                )
    return rows


def test_rmd17_round_trip(tmp_path):
    out = tmp_path / "ethanol"
    metadata = prepare("rmd17", "--src", ETHANOL_NPZ, "--out", out, "--train-size", 10, "--val-size", 10)
    npz = np.load(ETHANOL_NPZ)
    assert metadata["split_sizes"] == {"train": 10, "val": 10, "test": 40}  # all that is left of 60
    assert metadata["element_references"]["method"] == "none"
    assert metadata["units"] == {"energy": "kcal/mol", "forces": "kcal/mol/Angstrom", "positions": "Angstrom"}
    records = all_records(out)
    assert sorted(index for index, _ in records) == list(range(60))
    for index, data in records:
        assert data.natoms == 9
        np.testing.assert_array_equal(data.atomic_numbers.numpy(), npz["nuclear_charges"])
        np.testing.assert_allclose(data.pos.numpy(), npz["coords"][index], atol=1e-5)
        np.testing.assert_allclose(data.forces.numpy(), npz["forces"][index], rtol=1e-6, atol=1e-4)
        assert data.energy == pytest.approx(npz["energies"][index], abs=1e-9)
        assert not data.pbc.any() and not data.cell.any()
    train_energies = npz["energies"][json.loads((out / "split_indices.json").read_text())["train"]]
    assert metadata["train_statistics"]["energy_mean"] == pytest.approx(train_energies.mean())
    assert metadata["normalizers"]["energy"]["rmsd"] == pytest.approx(train_energies.std(ddof=1))


def test_ani1x_round_trip_converts_hartree_and_subtracts_fitted_self_energies(tmp_path):
    out = tmp_path / "ani1x"
    metadata = prepare("ani1x", "--src", ANI1X_H5, "--out", out, "--train-size", 20, "--val-size", 10, "--seed", 3)
    reference = ani1x_reference(ANI1X_H5)
    assert metadata["num_records"] == len(reference) == 64
    assert metadata["split_sizes"] == {"train": 20, "val": 10, "test": 34}
    # The self energies are the least-squares fit to the training split's compositions.
    train = json.loads((out / "split_indices.json").read_text())["train"]
    elements = [1, 6, 7, 8]
    counts = np.array([[np.sum(reference[i][0] == z) for z in elements] for i in train], dtype=float)
    totals = np.array([reference[i][2] * HA for i in train])
    expected = np.linalg.lstsq(counts, totals, rcond=None)[0]
    fitted = metadata["element_references"]["energies"]
    np.testing.assert_allclose([fitted[s] for s in ("H", "C", "N", "O")], expected, rtol=1e-8)
    self_energy = dict(zip(elements, expected, strict=True))
    for index, data in all_records(out):
        numbers, coordinates, energy, forces = reference[index]
        np.testing.assert_array_equal(data.atomic_numbers.numpy(), numbers)
        np.testing.assert_allclose(data.pos.numpy(), coordinates, atol=1e-5)
        np.testing.assert_allclose(data.forces.numpy(), forces * HA, rtol=1e-6, atol=1e-3)
        references = sum(self_energy[int(z)] for z in numbers)
        assert data.energy + references == pytest.approx(energy * HA, abs=1e-6)
        assert not data.pbc.any()
    assert abs(metadata["train_statistics"]["energy_mean"]) < 50  # atomization-like, not ~-1e4 totals


def test_ani1x_given_self_energies_and_energy_only_data(tmp_path):
    given = {"H": -0.5, "C": -37.8, "N": -54.6, "O": -75.0}
    table = tmp_path / "self_energies.json"
    table.write_text(json.dumps(given))
    out = tmp_path / "ani1x"
    metadata = prepare(
        "ani1x", "--src", ANI1X_H5, "--out", out, "--train-size", 8, "--val-size", 8, "--test-size", 8,
        "--self-energies", table, "--force-key", "none",
    )  # fmt: skip
    assert metadata["element_references"]["method"] == "given"
    assert metadata["element_references"]["energies"]["C"] == pytest.approx(-37.8 * HA)
    assert metadata["has_forces"] is False
    reference = ani1x_reference(ANI1X_H5)
    symbols = {1: "H", 6: "C", 7: "N", 8: "O"}
    for index, data in all_records(out):
        numbers, _, energy, _ = reference[index]
        assert data.energy == pytest.approx((energy - sum(given[symbols[int(z)]] for z in numbers)) * HA, abs=1e-6)
        assert "forces" not in data


def test_ani1x_conformers_with_nan_labels_are_skipped_and_counted(tmp_path):
    source = tmp_path / "with_nan.h5"
    shutil.copy(ANI1X_H5, source)
    with h5py.File(source, "r+") as h5:
        first, second = sorted(h5)[:2]
        h5[first]["wb97x_dz.energy"][1] = np.nan
        h5[first]["wb97x_dz.energy"][4] = np.nan
        for group, conformer in ((second, 2), (first, 1)):  # first[1]: energy and forces NaN, counted once
            forces = h5[group]["wb97x_dz.forces"]
            row = forces[conformer]
            row[0, 1] = np.nan
            forces[conformer] = row
    out = tmp_path / "ani1x"
    metadata = prepare("ani1x", "--src", source, "--out", out, "--train-size", 20, "--val-size", 20)
    assert metadata["skipped_records"] == {"NaN wb97x_dz.energy": 2, "NaN wb97x_dz.forces": 1}
    assert metadata["num_records"] == 61
    with h5py.File(ANI1X_H5) as h5:
        first_size = h5[sorted(h5)[0]]["coordinates"].shape[0]
    dropped = {1, 4, first_size + 2}
    kept = [row for i, row in enumerate(ani1x_reference(ANI1X_H5)) if i not in dropped]
    records = all_records(out)
    assert len(records) == len(kept) == 61
    for index, data in records:
        np.testing.assert_allclose(data.pos.numpy(), kept[index][1], atol=1e-5)
        assert np.isfinite(data.energy) and np.isfinite(data.forces.numpy()).all()


def test_ani1x_streams_the_same_records_in_any_block_size():
    selected = np.random.default_rng(0).random(64) < 0.4
    streams = []
    for block_size in (3, 4096):
        source = Ani1xSource(ANI1X_H5, block_size=block_size)
        assert source.count() == 64
        streams.append(list(source.records(selected)))
    assert [i for i, _ in streams[0]] == list(np.flatnonzero(selected))
    for (i, a), (j, b) in zip(*streams, strict=True):
        assert i == j and a.source == b.source
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.forces, b.forces)


def xsf_reference(path: Path) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(energy eV, numbers, positions, cell, forces eV/Å) of an aenet XSF, via ASE plus the comment line."""
    energy = float(re.search(r"total energy = (\S+) eV", path.read_text()).group(1))
    atoms = read(path)
    # ASE takes XSF forces for Ha/Å (the XSF specification) and converts; aenet wrote eV/Å.
    return energy, atoms.numbers, atoms.positions, atoms.cell.array, atoms.get_forces() / units.Hartree


def test_tio2_round_trip_periodic_with_cells(tmp_path):
    out = tmp_path / "tio2"
    metadata = prepare("tio2", "--src", TIO2_XSF, "--out", out, "--train-size", 4, "--val-size", 2)
    assert metadata["split_sizes"] == {"train": 4, "val": 2, "test": 6}
    assert metadata["elements"] == ["O", "Ti"]
    references = metadata["element_references"]
    assert references["method"] == "fit" and references["rank"] == 1  # Ti_n O_2n: one combination
    files = sorted(TIO2_XSF.glob("*.xsf"))
    for index, data in all_records(out):
        energy, numbers, positions, cell, forces = xsf_reference(files[index])
        np.testing.assert_array_equal(data.atomic_numbers.numpy(), numbers)
        np.testing.assert_allclose(data.pos.numpy(), positions, atol=1e-5)
        np.testing.assert_allclose(data.cell.numpy()[0], cell, atol=1e-5)
        assert data.pbc.numpy().tolist() == [[True, True, True]]
        np.testing.assert_allclose(data.forces.numpy(), forces * EV, rtol=1e-6, atol=1e-4)
        offset = sum(references["energies"]["Ti" if z == 22 else "O"] for z in numbers)
        assert data.energy + offset == pytest.approx(energy * EV, abs=1e-6)


def test_ase_extxyz_periodic_matches_the_original_xsf(tmp_path):
    out = tmp_path / "tio2_extxyz"
    metadata = prepare(
        "ase", "--src", TIO2_EXTXYZ, "--out", out, "--train-size", 2, "--val-size", 2, "--self-energies", "none"
    )
    assert metadata["split_sizes"] == {"train": 2, "val": 2, "test": 2}
    frames = read(TIO2_EXTXYZ, index=":")
    for index, data in all_records(out):
        energy, numbers, positions, cell, forces = xsf_reference(ROOT / frames[index].info["source"])
        np.testing.assert_array_equal(data.atomic_numbers.numpy(), numbers)
        np.testing.assert_allclose(data.pos.numpy(), positions, atol=1e-5)
        np.testing.assert_allclose(data.cell.numpy()[0], cell, atol=1e-5)
        assert data.pbc.all()
        np.testing.assert_allclose(data.forces.numpy(), forces * EV, rtol=1e-6, atol=1e-4)
        assert data.energy == pytest.approx(energy * EV, abs=1e-6)


@pytest.mark.parametrize("container", ["extxyz", "traj", "db", "directory"])
def test_ase_containers_hold_the_molecular_labels(tmp_path, container):
    if container == "extxyz":
        source = ETHANOL_EXTXYZ
    elif container == "directory":
        source = tmp_path / "frames"
        source.mkdir()
        write(source / "part1.extxyz", read(ETHANOL_EXTXYZ, index=":4"))
        write(source / "part2.extxyz", read(ETHANOL_EXTXYZ, index="4:"))
    else:
        source = tmp_path / f"ethanol.{container}"
        write(source, read(ETHANOL_EXTXYZ, index=":"))
    out = tmp_path / "out"
    fmt = "lmnto" if container == "directory" else "ase"
    metadata = prepare(
        fmt, "--src", source, "--out", out, "--train-size", 3, "--val-size", 3, "--self-energies", "none"
    )
    assert metadata["format"] == fmt and metadata["num_records"] == 8
    npz = np.load(ETHANOL_NPZ)
    for index, data in all_records(out):
        assert data.energy == pytest.approx(npz["energies"][index], rel=1e-12)
        np.testing.assert_allclose(data.forces.numpy(), npz["forces"][index], rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(data.pos.numpy(), npz["coords"][index], atol=1e-5)
        assert not data.pbc.any() and not data.cell.any()


def test_ase_format_reads_xsf_files_as_aenet_xsf(tmp_path):
    common = ("--train-size", 4, "--val-size", 2, "--self-energies", "none")
    prepare("tio2", "--src", TIO2_XSF, "--out", tmp_path / "tio2", *common)
    prepare("ase", "--src", TIO2_XSF, "--out", tmp_path / "ase", *common)
    for (i, a), (j, b) in zip(all_records(tmp_path / "tio2"), all_records(tmp_path / "ase"), strict=True):
        assert i == j and a.energy == b.energy
        np.testing.assert_array_equal(a.forces.numpy(), b.forces.numpy())  # eV/Å, not ASE's Ha/Å reading
        np.testing.assert_array_equal(a.cell.numpy(), b.cell.numpy())
