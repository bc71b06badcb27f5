"""Reliability: exact resume after SIGKILL/SIGTERM, atomic checkpoints, NaN guards, config and data checks."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import write_config
from trainer_helpers import ROOT, make_trainer, prepare_ethanol, tiny_config

from piwsl.checkpointing import CheckpointError, read_checkpoint
from piwsl.cli import main
from piwsl.config import PIWSLConfigError
from piwsl.displacements import close_contacts


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_ethanol(tmp_path_factory.mktemp("data"))


def long_run_config(data: Path, tmp_path: Path) -> Path:
    config = tiny_config(data, tmp_path, {"method": "piwsl", "c_pisc": 0.1, "atom_fraction": 0.8})
    config["optim"].update({"max_epochs": 40, "eval_every": 8, "checkpoint_every": 10})
    return write_config(tmp_path / "long.yml", config)


def train_command(config: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable, str(ROOT / "main.py"), "--mode", "train", "--config", str(config), "--cpu",
        "--run-dir", str(run_dir), "--identifier", "resume", "--print-every", "1000",
    ]  # fmt: skip


def final_checkpoint(run_dir: Path) -> dict:
    (path,) = run_dir.glob("checkpoints/*/checkpoint.pt")
    return read_checkpoint(str(path))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    config = long_run_config(data, tmp_path)
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(train_command(config, tmp_path / "run"), check=True, capture_output=True, env=environment)
    return config, final_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(uninterrupted, tmp_path, stop_signal):
    config, expected = uninterrupted
    run_dir = tmp_path / "run"
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        train_command(config, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    deadline = time.time() + 120
    while not list(run_dir.glob("checkpoints/*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(stop_signal)
    returncode = process.wait(timeout=120)
    assert returncode in (-9, 128 + signal.SIGTERM), f"the run ended on its own ({returncode}) before the signal"
    interrupted = final_checkpoint(run_dir)
    assert 0 < interrupted["step"] < expected["step"]
    subprocess.run(train_command(config, run_dir), check=True, capture_output=True, env=environment)
    resumed = final_checkpoint(run_dir)
    assert resumed["step"] == expected["step"] == 160
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert resumed["best_val_metric"] == expected["best_val_metric"]
    assert resumed["config"]["optim"]["piwsl"] == expected["config"]["optim"]["piwsl"]


def test_rerunning_a_finished_run_trains_no_more_steps(uninterrupted, tmp_path):
    config, expected = uninterrupted
    run_dir = Path(expected["config"]["cmd"]["checkpoint_dir"]).parents[1]
    before = os.path.getmtime(next(run_dir.glob("checkpoints/*/checkpoint.pt")))
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(train_command(config, run_dir), check=True, capture_output=True, env=environment)
    assert final_checkpoint(run_dir)["step"] == expected["step"]
    assert os.path.getmtime(next(run_dir.glob("checkpoints/*/checkpoint.pt"))) >= before


def test_a_failed_save_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "piwsl"}))
    path = trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
    good = read_checkpoint(path)

    def torch_save_that_dies(state, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", torch_save_that_dies)
    trainer.step = 99
    with pytest.raises(KeyboardInterrupt):
        trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
    monkeypatch.undo()
    assert read_checkpoint(path)["step"] == good["step"]


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(str(path))


@pytest.mark.parametrize("mode", ["batched", "sequential"])
def test_nonfinite_displaced_predictions_never_reach_the_weights(data, tmp_path, mode, caplog):
    section = {"method": "piwsl", "forward_mode": mode, "max_nonfinite_steps": 3}
    trainer = make_trainer(tiny_config(data, tmp_path, section))
    original = trainer._forward_geometries

    def poisoned(parts):
        outputs = original(parts)
        for output in outputs[-2:]:  # the displaced geometries
            output["energy"] = output["energy"] * float("nan")
        return outputs

    trainer._forward_geometries = poisoned
    batch = next(iter(trainer.train_loader))
    for step in (1, 2):
        trainer.step = step
        trainer.model.train()
        loss = trainer._compute_loss(trainer._forward(copy.deepcopy(batch)), batch)
        assert torch.isfinite(loss)
        trainer._backward(loss)
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer._nonfinite_steps == 2 and "non-finite" in caplog.text
    trainer.step = 3
    with pytest.raises(FloatingPointError, match="max_nonfinite_steps"):
        trainer._compute_loss(trainer._forward(copy.deepcopy(batch)), batch)


def test_close_contacts_respect_periodic_images_and_preexisting_pairs():
    positions = torch.tensor([[0.1, 0.0, 0.0], [3.9, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    batch_index = torch.tensor([0, 0, 1, 1])
    natoms = torch.tensor([2, 2])
    cell = torch.stack([4 * torch.eye(3), torch.zeros(3, 3)])
    pbc = torch.tensor([[True, True, True], [False, False, False]])
    toward = torch.tensor([[-0.05, 0, 0], [0.05, 0, 0], [0, 0, 0], [0.0, 0, 0]])
    # periodic: 0.2 Å apart through the boundary becomes 0.1 Å; molecule: already 0.3 Å apart, not counted
    assert close_contacts(positions, toward, batch_index, natoms, cell, pbc, 0.15).tolist() == [True, False]
    assert close_contacts(positions, -toward, batch_index, natoms, cell, pbc, 0.15).tolist() == [False, False]


def test_displacements_that_bring_atoms_too_close_are_redrawn(data, tmp_path):
    section = {"method": "piwsl", "max_displacement": 0.3, "min_distance": 0.85}
    trainer = make_trainer(tiny_config(data, tmp_path, section))
    batch = next(iter(trainer.train_loader))
    for _ in range(20):
        displacement = trainer._sample_random(batch)
        bad = close_contacts(batch.pos, displacement, batch.batch, batch.natoms, batch.cell, batch.pbc, 0.85)
        assert not bad.any()
    del trainer
    unchecked = copy.deepcopy(section) | {"min_distance": 0.0}
    trainer_without_check = make_trainer(tiny_config(data, tmp_path / "unchecked", unchecked))
    violations = sum(
        bool(
            close_contacts(
                batch.pos, trainer_without_check._sample_random(batch), batch.batch, batch.natoms, batch.cell,
                batch.pbc, 0.85,
            ).any()
        )
        for _ in range(20)
    )  # fmt: skip
    assert violations > 0  # the check is not vacuous at this displacement size


def test_force_loss_without_force_labels_is_rejected(tmp_path):
    data = prepare_ethanol(tmp_path, energy_only=True)
    config = tiny_config(data, tmp_path, {"method": "piwsl"})
    config["dataset"]["train"]["transforms"]["normalizer"]["fit"]["targets"] = {"energy": {}}
    with pytest.raises(PIWSLConfigError, match="loss_functions.forces.coefficient = 100.*no 'forces' labels"):
        make_trainer(config)
    config["loss_functions"][1]["forces"]["coefficient"] = 0
    config["piwsl"] = {"method": "weak_label"}
    with pytest.raises(PIWSLConfigError, match="weak_label.*force labels"):
        make_trainer(config)


def test_adversarial_directions_need_a_method_that_uses_them(data, tmp_path):
    with pytest.raises(PIWSLConfigError, match="adversarial.*noisynode"):
        make_trainer(tiny_config(data, tmp_path, {"method": "noisynode", "direction": "adversarial"}))


def run_main(config: Path, capsys) -> tuple[int, str]:
    code = main(["--mode", "train", "--config", str(config), "--cpu", "--run-dir", str(config.parent / "run")])
    return code, capsys.readouterr().err.strip()


def test_truncated_lmdb_is_a_one_line_error(data, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    lmdb_file = broken / "train" / "data.lmdb"
    lmdb_file.write_bytes(lmdb_file.read_bytes()[:6000])
    code, error = run_main(write_config(tmp_path / "c.yml", tiny_config(broken, tmp_path, {})), capsys)
    assert code == 2 and len(error.splitlines()) == 1 and "data.lmdb" in error


def test_units_that_differ_from_the_config_are_rejected(data, tmp_path, capsys):
    config = tiny_config(data, tmp_path, {})
    config["units"] = {"energy": "eV", "forces": "eV/Angstrom"}
    code, error = run_main(write_config(tmp_path / "c.yml", config), capsys)
    assert code == 2 and "kcal/mol" in error and "units.energy" in error


def test_a_test_split_that_overlaps_training_is_rejected(data, tmp_path, capsys):
    config = tiny_config(data, tmp_path, {})
    config["dataset"]["test"] = {"src": str(data / "train")[:-5] + "train/../train"}
    code, error = run_main(write_config(tmp_path / "c.yml", config), capsys)
    assert code == 2 and "16 structure(s) of the test set" in error
