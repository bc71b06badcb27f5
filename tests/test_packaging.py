"""Packaging: console commands, executable scripts, a light ``import piwsl`` (no fairchem for the losses)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib

import pytest
from trainer_helpers import ROOT

ENTRY_POINTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_losses_and_samplers_import_without_fairchem():
    code = (
        "import sys, piwsl, piwsl.losses, piwsl.displacements; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('fairchem', 'torch_geometric')); "
        "assert not heavy, heavy; assert piwsl.PITCLoss is piwsl.losses.PITCLoss"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("command", sorted(ENTRY_POINTS))
def test_console_commands_answer_help(command, monkeypatch, capsys):
    module_name, function_name = ENTRY_POINTS[command].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        function()
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")) + ["../main.py"])
def test_scripts_are_executable_with_a_shebang(script):
    path = ROOT / "scripts" / script
    assert os.access(path, os.X_OK) and path.read_text().startswith("#!/usr/bin/env python\n")
