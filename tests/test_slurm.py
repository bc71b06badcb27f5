"""main.py --submit: both SLURM tools required, --sweep-yml arrays, CPU jobs set up over gloo (no CUDA/NCCL)."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys

import pytest
import yaml
from test_cli import write_config
from trainer_helpers import ROOT, prepare_ethanol, tiny_config

from piwsl.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_ethanol(tmp_path_factory.mktemp("data"))


def fake_tools(tmp_path, **bodies: str) -> str:
    """A PATH holding stand-in SLURM commands (shell bodies) before the real PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in bodies.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_sbatch_without_srun_is_an_error_not_a_local_run(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", fake_tools(tmp_path, sbatch="echo Submitted batch job 1"))
    monkeypatch.setattr(
        "shutil.which", lambda tool, *a, **k: str(tmp_path / "bin/sbatch") if tool == "sbatch" else None
    )
    config = write_config(tmp_path / "ok.yml", tiny_config(data, tmp_path, {"method": "piwsl"}))
    assert main(["--mode", "train", "--config", str(config), "--submit", "--logdir", str(tmp_path / "logs")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "'srun' is not on PATH" in error
    assert not list(tmp_path.rglob("checkpoint.pt")), "nothing may train locally"


def test_sweep_without_submit_is_an_error(data, tmp_path, capsys):
    config = write_config(tmp_path / "ok.yml", tiny_config(data, tmp_path, {"method": "piwsl"}))
    (tmp_path / "sweep.yml").write_text("piwsl: {c_pitc: [0.5, 1.0]}\n")
    assert main(["--mode", "train", "--config", str(config), "--sweep-yml", str(tmp_path / "sweep.yml")]) == 2
    assert "--sweep-yml runs its configs as a SLURM array and needs --submit" in capsys.readouterr().err


def test_sweep_submits_one_array_task_per_combination(data, tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    monkeypatch.setenv(
        "PATH", fake_tools(tmp_path, sbatch=f'echo "$@" >> {calls}; echo "Submitted batch job 77"', srun="exit 0")
    )
    config = write_config(tmp_path / "ok.yml", tiny_config(data, tmp_path, {"method": "piwsl"}))
    (tmp_path / "sweep.yml").write_text(yaml.safe_dump({"piwsl": {"c_pitc": [0.5, 1.0]}, "optim.lr_initial": [1e-3]}))
    arguments = ["--mode", "train", "--config", str(config), "--submit", "--cpu", "--logdir", str(tmp_path / "logs")]
    assert main(arguments + ["--sweep-yml", str(tmp_path / "sweep.yml"), "--identifier", "sw"]) == 0
    jobs = []
    for path in sorted((tmp_path / "logs").rglob("*_submitted.pkl")):
        with open(path, "rb") as handle:
            jobs.append(pickle.load(handle).args[0])
    assert sorted(job["optim"]["piwsl"]["c_pitc"] for job in jobs) == [0.5, 1.0]
    assert {job["identifier"] for job in jobs} == {"sw_run0", "sw_run1"}
    assert all(job["optim"]["lr_initial"] == 1e-3 and job["slurm"]["gpus_per_node"] == 0 for job in jobs)
    assert len({job["timestamp_id"] for job in jobs}) == 2


def test_cpu_job_under_slurm_trains_over_gloo_without_cuda(data, tmp_path):
    """What a --submit --cpu array task runs on its node: fairchem's SLURM set-up would call CUDA and NCCL."""
    config = tiny_config(data, tmp_path, {"method": "piwsl"})
    config["optim"].update({"max_epochs": 1, "eval_every": 2})
    config_file = write_config(tmp_path / "job.yml", config)
    driver = (
        "import sys; from piwsl.cli import PIWSLRunner, get_parser, prepare_config; "
        "from fairchem.core.common.utils import build_config; "
        "args, overrides = get_parser().parse_known_args(sys.argv[1:]); "
        "config = prepare_config(build_config(args, overrides)); config['submit'] = True; PIWSLRunner()(config)"
    )
    environment = os.environ | {
        "PATH": fake_tools(tmp_path, scontrol="echo localhost"),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "4242",
    }
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        environment.pop(name, None)
    command = [sys.executable, "-c", driver, "--mode", "train", "--config", str(config_file), "--cpu"]
    command += ["--run-dir", str(tmp_path / "run"), "--identifier", "slurmcpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list((tmp_path / "run").rglob("best_checkpoint.pt"))
