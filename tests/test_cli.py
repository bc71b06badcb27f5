"""main.py: config errors in one line, fairchem flags, 2-rank CPU DDP, SLURM submission via submitit."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from trainer_helpers import ROOT, prepare_ethanol, tiny_config

from piwsl.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_ethanol(tmp_path_factory.mktemp("data"))


def write_config(path: Path, config: dict) -> Path:
    config = {k: v for k, v in config.items() if k not in ("run_dir", "identifier", "timestamp_id", "seed", "cpu")}
    path.write_text(yaml.safe_dump(config))
    return path


def test_unknown_piwsl_key_is_a_one_line_error(data, tmp_path, capsys):
    config = write_config(tmp_path / "bad.yml", tiny_config(data, tmp_path, {"method": "piwsl", "c_pict": 1.0}))
    assert main(["--mode", "train", "--config", str(config), "--cpu", "--run-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "c_pict" in error and len(error.splitlines()) == 1


def test_bad_value_names_key_value_and_allowed_range(data, tmp_path, capsys):
    config = write_config(tmp_path / "bad.yml", tiny_config(data, tmp_path, {"max_displacement": 0.5}))
    assert main(["--mode", "train", "--config", str(config), "--cpu"]) == 2
    error = capsys.readouterr().err
    assert "max_displacement = 0.5" in error and "0.327" in error


def test_missing_dataset_names_path_and_preparation_command(capsys):
    config = ROOT / "configs/ani1x/painn_piwsl.yml"
    missing = "/nonexistent/ani1x/train"
    assert main(["--mode", "train", "--config", str(config), "--cpu", f"--dataset.train.src={missing}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert missing in error and "python scripts/prepare_data.py ani1x" in error


def test_submit_without_slurm_is_a_clear_error(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    config = write_config(tmp_path / "ok.yml", tiny_config(data, tmp_path, {"method": "piwsl"}))
    assert main(["--mode", "train", "--config", str(config), "--submit", "--logdir", str(tmp_path / "logs")]) == 2
    assert "sbatch" in capsys.readouterr().err


def test_submit_writes_a_slurm_array_job_through_submitit(data, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls"
    for name, body in {
        "sbatch": f'cp "$1" {calls}.script; echo "$@" >> {calls}; echo "Submitted batch job 4242"',
        "srun": "exit 0",
    }.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = write_config(tmp_path / "ok.yml", tiny_config(data, tmp_path, {"method": "piwsl", "preset": "C"}))
    arguments = ["--mode", "train", "--config", str(config), "--submit", "--logdir", str(tmp_path / "logs")]
    arguments += ["--slurm-partition", "gpu-a100", "--slurm-timeout", "2", "--identifier", "piwsl-test"]
    assert main(arguments) == 0
    sbatch_script = Path(f"{calls}.script").read_text()
    assert "#SBATCH --partition=gpu-a100" in sbatch_script and "#SBATCH --time=120" in sbatch_script
    assert "submitit" in sbatch_script
    submitted = list((tmp_path / "logs").rglob("*_submitted.pkl"))
    assert submitted, "submitit pickled no job"
    import pickle

    with open(submitted[0], "rb") as handle:
        delayed = pickle.load(handle)
    job_config = delayed.args[0]
    assert type(delayed.function).__name__ == "PIWSLRunner"
    assert job_config["optim"]["piwsl"]["preset"] == "C" and "piwsl" not in job_config


def test_two_rank_cpu_ddp_training(data, tmp_path):
    config = tiny_config(data, tmp_path, {"method": "piwsl", "c_pisc": 0.1})
    config["optim"].update({"max_epochs": 1, "eval_every": 2})
    config_file = write_config(tmp_path / "ddp.yml", config)
    command = [
        sys.executable, str(ROOT / "main.py"), "--mode", "train", "--config", str(config_file), "--cpu",
        "--num-gpus", "2", "--run-dir", str(tmp_path / "run"), "--identifier", "ddp", "--timestamp-id", "ddp",
        "--print-every", "1",
    ]  # fmt: skip
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "pitc_loss" in log and "pisc_loss" in log
    checkpoint = torch.load(tmp_path / "run/checkpoints/ddp/checkpoint.pt", weights_only=False)
    assert checkpoint["config"]["gpus"] == 0 and checkpoint["step"] == 2  # 16 structures / (2 ranks x 4)
