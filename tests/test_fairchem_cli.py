"""fairchem's own CLI (``fairchem --mode train``) with the piwsl trainer named by its dotted path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from trainer_helpers import ROOT, make_trainer, prepare_ethanol, tiny_config

from piwsl.cli import main
from piwsl.config import PIWSLConfigError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_ethanol(tmp_path_factory.mktemp("data"))


def fairchem_config(data, tmp_path, **changes) -> dict:
    """The tiny config as an existing OCP project would write it: dotted trainer, ``optim.piwsl``."""
    config = tiny_config(data, tmp_path, {})
    config = {k: v for k, v in config.items() if k not in ("run_dir", "identifier", "timestamp_id", "seed", "cpu")}
    config["optim"]["piwsl"] = config.pop("piwsl") | {"method": "piwsl", "c_pisc": 0.1}
    config["optim"].update({"max_epochs": 1, "eval_every": 2})
    config["trainer"] = "piwsl.trainer.PIWSLTrainer"
    return config | changes


def run_fairchem(config: dict, tmp_path) -> subprocess.CompletedProcess:
    config_file = tmp_path / "fairchem.yml"
    config_file.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "fairchem.core._cli", "--mode", "train", "--config-yml", str(config_file), "--cpu",
        "--run-dir", str(tmp_path / "run"), "--identifier", "ocp", "--timestamp-id", "ocp", "--print-every", "1",
    ]  # fmt: skip
    environment = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)


def test_fairchem_cli_trains_with_the_dotted_trainer_name(data, tmp_path):
    result = run_fairchem(fairchem_config(data, tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "pitc_loss" in log and "pisc_loss" in log
    assert "trainer: piwsl" in log and "trainer: ocp" not in log  # fairchem's start-up config dump
    assert (tmp_path / "run/checkpoints/ocp/best_checkpoint.pt").is_file()
    checkpoint = torch.load(tmp_path / "run/checkpoints/ocp/checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 4 and checkpoint["config"]["trainer"] == "piwsl.trainer.PIWSLTrainer"


def test_fairchem_cli_with_a_top_level_piwsl_section_stops_in_one_line(data, tmp_path):
    config = fairchem_config(data, tmp_path)
    config["piwsl"] = config["optim"].pop("piwsl") | {"method": "baseline"}
    result = run_fairchem(config, tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: fairchem's CLI ignores the config's top-level 'piwsl' section"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run/checkpoints/ocp/checkpoint.pt").exists()


def test_use_pbc_false_without_pyg_lib_says_what_to_set(data, tmp_path, capsys):
    pytest.importorskip("torch_geometric")
    try:
        import pyg_lib  # noqa: F401

        pytest.skip("pyg-lib is installed: use_pbc False works")
    except ImportError:
        pass
    with pytest.raises(PIWSLConfigError, match="model.use_pbc = False .* set model.use_pbc: True"):
        make_trainer(tiny_config(data, tmp_path, {"method": "baseline"}, use_pbc=False))
    config = tiny_config(data, tmp_path, {"method": "baseline"}, use_pbc=False)
    config_file = tmp_path / "no_pbc.yml"
    config_file.write_text(yaml.safe_dump({k: v for k, v in config.items() if k not in ("run_dir", "cpu")}))
    assert main(["--mode", "train", "--config", str(config_file), "--cpu", "--run-dir", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "use_pbc" in error
    assert not torch.distributed.is_initialized(), "a failed run must not leave its process group open"
