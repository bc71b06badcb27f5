"""The benchmark and diagnostic scripts run and write what they promise (timings are not tested)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trainer_helpers import ETHANOL, ROOT


def run_script(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, timeout=300, check=True, cwd=ROOT
    )


def test_benchmark_step_writes_ratios_for_every_variant(tmp_path):
    output = tmp_path / "step.json"
    run_script(
        "scripts/benchmark_step.py", "--model", "painn_small", "--batch-size", "2", "--steps", "2",
        "--warmup", "0", "--data", str(ETHANOL), "--devices", "cpu", "--profile", "1", "--json", str(output),
    )  # fmt: skip
    result = json.loads(output.read_text())["results"][0]
    assert set(result["variants"]) == {"supervised", "piwsl_sequential", "piwsl_batched"}
    assert all(v["median_step_s"] > 0 and v["saved_activations_mb"] > 0 for v in result["variants"].values())
    profile = result["variants"]["piwsl_batched"]["profile"]
    assert len(profile) > 3 and all(row["self_ms_per_step"] >= 0 and row["calls_per_step"] > 0 for row in profile)
    table = run_script("scripts/benchmark_table.py", str(output), "--out", str(tmp_path / "table.md")).stdout
    row = table.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "painn_small" and float(row[-3]) == pytest.approx(
        result["ratios"]["batched/sequential"], abs=0.01
    )
    assert (tmp_path / "table.md").read_text() == table
    assert set(result["ratios"]) == {"piwsl_batched/supervised", "piwsl_sequential/supervised", "batched/sequential"}


def test_remainders_shrink_as_second_and_third_order_on_the_reference(tmp_path):
    pytest.importorskip("tblite")
    output = tmp_path / "remainder.json"
    run_script(
        "scripts/taylor_remainder.py", "--data", str(ETHANOL), "--structures", "6",
        "--max-displacement", "0.08", "0.04", "--json", str(output),
    )  # fmt: skip
    rows = json.loads(output.read_text())["rows"]
    taylor = rows[0]["taylor_rms_remainder"] / rows[1]["taylor_rms_remainder"]
    trapezoid = rows[0]["trapezoid_rms_remainder"] / rows[1]["trapezoid_rms_remainder"]
    assert 2.5 < taylor < 6  # second order: halving dr_max divides the remainder by about 4
    assert 5.5 < trapezoid < 12  # third order: by about 8
    assert all(row["trapezoid_rms_remainder"] < 0.3 * row["taylor_rms_remainder"] for row in rows)


@pytest.mark.parametrize(
    "script",
    [
        "scripts/demo.py",
        "scripts/evaluate.py",
        "scripts/benchmark_step.py",
        "scripts/benchmark_table.py",
        "scripts/taylor_remainder.py",
        "scripts/diagnostics/neighbour_cap.py",
    ],
)
def test_help_explains_the_flags(script):
    assert "--" in run_script(script, "--help").stdout
