"""PySCF labels: forces are the energy's gradient, a killed run resumes without recomputing, sets prepare as sGDML."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from piwsl.datagen.dft import (
    PROGRESS_FILE,
    DftError,
    DftLevel,
    Label,
    check_level,
    compute_label,
    label_frames,
    plan_frames,
    read_progress,
)

pytest.importorskip("pyscf")

ROOT = Path(__file__).resolve().parents[1]
WATER_NUMBERS = np.array([8, 1, 1])
WATER = np.array([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]])
CHEAP = DftLevel("pbe", "sto-3g")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"scripts/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DFT_CLI = load_script("generate_dft_data")


def water_frames(path: Path, count: int = 5) -> Path:
    """An sGDML npz of ``count`` rattled water molecules (placeholder zero energies and forces)."""
    rng = np.random.default_rng(1)
    coords = WATER + 0.03 * rng.normal(size=(count, 3, 3))
    np.savez(path, z=WATER_NUMBERS, R=coords, E=np.zeros(count), F=np.zeros_like(coords))
    return path


def fake_label(numbers: np.ndarray, positions: np.ndarray, level: DftLevel, with_forces: bool) -> Label:
    """A cheap deterministic stand-in for ``compute_label``: energy = sum of squared coordinates."""
    return Label(float(np.square(positions).sum()), -2 * positions if with_forces else None, 0.0)


def test_forces_are_minus_the_gradient_of_the_energy_in_kcal_per_mol_and_angstrom():
    geometry = WATER + 0.02 * np.random.default_rng(0).normal(size=WATER.shape)
    label = compute_label(WATER_NUMBERS, geometry, CHEAP, with_forces=True)
    assert label.energy == pytest.approx(-47206, abs=5)  # PBE/STO-3G water, -75.23 Ha, in kcal/mol
    direction = np.random.default_rng(1).normal(size=WATER.shape)
    direction /= np.linalg.norm(direction)
    step = 1e-3  # Å
    plus = compute_label(WATER_NUMBERS, geometry + step * direction, CHEAP, with_forces=False).energy
    minus = compute_label(WATER_NUMBERS, geometry - step * direction, CHEAP, with_forces=False).energy
    assert -(plus - minus) / (2 * step) == pytest.approx(float((label.forces * direction).sum()), abs=0.05)


def test_frame_plan_is_disjoint_with_test_frames_independent_of_the_training_count():
    small, large = plan_frames(50, 5, 10, seed=3), plan_frames(50, 20, 10, seed=3)
    np.testing.assert_array_equal(small.test, large.test)
    np.testing.assert_array_equal(small.train, large.train[:5])
    assert not set(large.train) & set(large.test) and len(set(large.train)) == 20
    with pytest.raises(DftError, match="25 training \\+ 30 test frames requested, the source has only 50"):
        plan_frames(50, 25, 30, seed=0)


def test_a_killed_run_resumes_without_recomputing_finished_frames(tmp_path):
    positions = {i: WATER + 0.01 * i for i in range(8)}
    plan = plan_frames(8, 4, 3, seed=0)
    header = {"level": {"functional": "fake"}}
    calls = []

    def dying_label(numbers, frame_positions, level, with_forces):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return fake_label(numbers, frame_positions, level, with_forces)

    progress = tmp_path / PROGRESS_FILE
    with pytest.raises(KeyboardInterrupt):
        label_frames(WATER_NUMBERS, positions, plan, CHEAP, progress, header, compute=dying_label)
    with open(progress, "a") as handle:  # a write torn by the kill
        handle.write('{"index": 5, "ener')
    counted = []

    def counting_label(*args):
        counted.append(args[1])
        return fake_label(*args)

    resumed = label_frames(WATER_NUMBERS, positions, plan, CHEAP, progress, header, compute=counting_label)
    assert len(counted) == len(plan.tasks()) - 3
    expected = {task: fake_label(WATER_NUMBERS, positions[task[0]], CHEAP, task[1]) for task in plan.tasks()}
    assert resumed.keys() == expected.keys()
    for task, label in expected.items():
        assert resumed[task].energy == label.energy
        assert (resumed[task].forces is None) == (label.forces is None)
        if label.forces is not None:
            np.testing.assert_array_equal(resumed[task].forces, label.forces)
    _, stored = read_progress(progress)
    assert stored.keys() == expected.keys()
    with pytest.raises(DftError, match=r"progress\.jsonl: made with level = \{'functional': 'fake'\}, this run has"):
        label_frames(WATER_NUMBERS, positions, plan, CHEAP, progress, {"level": {"functional": "pbe"}})


def test_cli_labels_water_frames_and_the_sets_prepare_as_sgdml(tmp_path, capsys):
    src = water_frames(tmp_path / "water.npz")
    out = tmp_path / "dft"
    argv = ["sgdml", "--src", str(src), "--out", str(out), "--train-frames", "2", "--test-frames", "2"]
    assert DFT_CLI.main(argv + ["--functional", "pbe", "--basis", "sto-3g"]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["pyscf_version"] and provenance["theory"] == "pbe/sto-3g"
    assert provenance["command"].endswith("--functional pbe --basis sto-3g")
    assert provenance["source_frames"]["train"] == plan_frames(5, 2, 2, 0).train.tolist()
    assert not (out / PROGRESS_FILE).exists()
    train, test = np.load(out / "train.npz"), np.load(out / "test.npz")
    assert "F" not in train.files and test["F"].shape == (2, 3, 3) and train["E"].shape == (2,)
    frame = test["source_frames"][0]
    label = compute_label(WATER_NUMBERS, np.load(src)["R"][frame], CHEAP, with_forces=True)
    assert test["E"][0] == pytest.approx(label.energy, abs=1e-5)
    np.testing.assert_allclose(test["F"][0], label.forces, atol=1e-4)
    # Both files read through prepare_data.py's sGDML reader (two frames are too few for its three splits).
    from piwsl.data.formats import SgdmlSource

    for name, force_key in (("train", None), ("test", "F")):
        source = SgdmlSource(out / f"{name}.npz", force_key=force_key)
        assert source.count() == 2
        records = [structure for _, structure in source.records()]
        assert len(records) == 2 and all((s.forces is not None) == (name == "test") for s in records)
    capsys.readouterr()
    assert DFT_CLI.main(argv) == 2
    assert "train.npz exists: this set is complete; choose another --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    "level, message",
    [
        (DftLevel("pbe0x", "sto-3g"), "functional 'pbe0x' is unknown to PySCF/libxc"),
        (DftLevel("pbe", "sto-9g"), "basis 'sto-9g' is unknown to PySCF for element H"),
    ],
)
def test_unknown_functional_or_basis_is_named(level, message):
    with pytest.raises(DftError, match=message):
        check_level(level, WATER_NUMBERS)


def test_two_workers_give_the_labels_of_one(tmp_path):
    positions = {i: WATER + 0.01 * i for i in range(6)}
    plan = plan_frames(6, 3, 2, seed=1)
    header = {"level": {"functional": "fake"}}
    serial = label_frames(WATER_NUMBERS, positions, plan, CHEAP, tmp_path / "a.jsonl", header, compute=fake_label)
    parallel = label_frames(
        WATER_NUMBERS, positions, plan, CHEAP, tmp_path / "b.jsonl", header, workers=2, compute=fake_label
    )
    assert parallel.keys() == serial.keys()
    assert all(parallel[task].energy == serial[task].energy for task in serial)


def test_a_failed_scf_names_the_source_frame_and_keeps_the_frames_before_it(tmp_path):
    positions = {i: WATER + 0.01 * i for i in range(6)}
    plan = plan_frames(6, 4, 0, seed=0)

    def failing_label(numbers, frame_positions, level, with_forces):
        if np.isclose(frame_positions[0, 0], 0.01 * int(plan.train[2])):
            raise DftError("the SCF did not converge")
        return fake_label(numbers, frame_positions, level, with_forces)

    progress = tmp_path / PROGRESS_FILE
    with pytest.raises(DftError, match=rf"^source frame {plan.train[2]}: the SCF did not converge$"):
        label_frames(WATER_NUMBERS, positions, plan, CHEAP, progress, {"level": {}}, compute=failing_label)
    assert sorted(read_progress(progress)[1]) == sorted((int(i), False) for i in plan.train[:2])


def test_extend_adds_training_frames_and_keeps_the_finished_set(tmp_path, capsys):
    src = water_frames(tmp_path / "water.npz", count=7)
    out = tmp_path / "dft"
    base = ["sgdml", "--src", str(src), "--out", str(out), "--functional", "pbe", "--basis", "sto-3g", "--name", "w"]
    assert DFT_CLI.main(base + ["--train-frames", "2", "--test-frames", "2"]) == 0
    before = {name: dict(np.load(out / f"{name}.npz")) for name in ("train", "test")}
    first = json.loads((out / "provenance.json").read_text())
    assert DFT_CLI.main(base + ["--train-frames", "4", "--test-frames", "2", "--extend"]) == 0
    train, test = np.load(out / "train.npz"), np.load(out / "test.npz")
    for key in ("E", "F", "R", "source_frames"):
        np.testing.assert_array_equal(test[key], before["test"][key])
    for key in ("E", "R", "source_frames"):
        np.testing.assert_array_equal(train[key][:2], before["train"][key])
    assert train["source_frames"].tolist() == plan_frames(7, 4, 2, 0).train.tolist() and str(train["name"]) == "w"
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["frames"] == {"train": 4, "test": 2} and provenance["label_seconds"]["frames"] == 2
    assert provenance["history"] == [{k: v for k, v in first.items() if k != "source_frames"}]
    assert provenance["command"].endswith("--extend")
    new_frame = int(train["source_frames"][3])
    label = compute_label(WATER_NUMBERS, np.load(src)["R"][new_frame], CHEAP, with_forces=False)
    assert train["E"][3] == pytest.approx(label.energy, abs=1e-5)
    capsys.readouterr()
    assert DFT_CLI.main(base + ["--train-frames", "3", "--test-frames", "2", "--extend"]) == 2
    assert "its 4 training frames are not the first of this run's 3" in capsys.readouterr().err
    assert DFT_CLI.main(base + ["--train-frames", "4", "--test-frames", "3", "--extend"]) == 2
    assert "--extend keeps the test set: pass --test-frames 2" in capsys.readouterr().err
    assert DFT_CLI.main(base + ["--train-frames", "4", "--test-frames", "2", "--extend", "--seed", "1"]) == 2
    assert "made with seed = 0, this run has 1; --extend must keep" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out / "train.npz")["E"], train["E"])
