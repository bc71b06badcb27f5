"""The preparation CLI documents every flag, and each dataset config prepares what it trains on."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts/prepare_data.py")
CLI = importlib.util.module_from_spec(spec)
spec.loader.exec_module(CLI)


def test_help_explains_every_flag(capsys):
    parser = CLI.get_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for action in parser._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            assert option in text
    for fmt in ("ani1x", "rmd17", "tio2", "lmnto", "ase"):
        assert fmt in text


@pytest.mark.parametrize(
    "dataset, fmt", [("ani1x", "ani1x"), ("rmd17", "rmd17"), ("md22", "md22"), ("tio2", "tio2"), ("lmnto", "lmnto")]
)
def test_dataset_base_config_points_at_what_its_command_prepares(dataset, fmt):
    config = yaml.safe_load((ROOT / f"configs/{dataset}/base.yml").read_text())
    assert config["includes"] == ["../common.yml"]
    command = shlex.split(config["dataset_preparation"])
    assert command[:2] == ["python", "scripts/prepare_data.py"]
    args = CLI.get_parser().parse_args(command[2:])
    assert args.format == fmt
    for split in ("train", "val", "test"):
        assert Path(config["dataset"][split]["src"]) == args.out / split
    assert config["dataset"]["train"]["format"] == "lmdb"
