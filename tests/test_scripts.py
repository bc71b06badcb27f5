"""The benchmark and diagnostic scripts run and write what they promise (timings are not tested)."""

from __future__ import annotations

import csv
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
        "scripts/compare_levels.py",
        "scripts/finetune_report.py",
    ],
)
def test_help_explains_the_flags(script):
    assert "--" in run_script(script, "--help").stdout


def test_consistency_form_report_builds_overview_fronts_and_curves(tmp_path):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    methods = {"baseline": ("Baseline", 4.0, 2.0), "baseline_e10": ("Baseline, E coef 10", 3.0, 2.5),
               "trapezoid": ("Trapezoid", 2.0, 2.1)}  # fmt: skip
    for method, (label, energy, forces) in methods.items():
        for seed in (0, 1):
            result = {
                "run": f"mol-painn-{method}-n100-s{seed}", "run_id": f"mol-painn-{method}-n100-s{seed}-abc",
                "dataset": "mol", "backbone": "painn", "backbone_label": "PaiNN", "method": method,
                "method_label": label, "train_size": 100, "seed": seed,
                "data": f"datasets/experiments/mol-n100-s{seed}",
                "train_wall_s": 10.0 + seed, "steps": 30,
                "test": {"energy_rmse": energy + seed, "forces_rmse": forces, "num_structures": 5},
            }  # fmt: skip
            (results / "runs" / f"{result['run']}.json").write_text(json.dumps(result))
    # a run of a tagged study (four times the steps) is its own row, not a third seed of "trapezoid"
    longer = json.loads((results / "runs/mol-painn-trapezoid-n100-s0.json").read_text())
    longer |= {"run": "mol-painn-trapezoid-n100-s0-long", "tag": "long", "max_steps": 120, "steps": 120}
    longer["test"] = longer["test"] | {"energy_rmse": 1.0}
    (results / "runs/mol-painn-trapezoid-n100-s0-long.json").write_text(json.dumps(longer))
    # a run of another backbone with the same method is its own row too
    other = json.loads((results / "runs/mol-painn-baseline-n100-s0.json").read_text())
    other |= {"run": "mol-escn-baseline-n100-s0", "backbone": "escn", "backbone_label": "eSCN"}
    other["test"] = other["test"] | {"energy_rmse": 7.0}
    (results / "runs/mol-escn-baseline-n100-s0.json").write_text(json.dumps(other))
    # an energy-only run says so in its label
    energy_only = json.loads((results / "runs/mol-painn-baseline-n100-s1.json").read_text())
    energy_only |= {"run": "mol-painn-eo_baseline-n100-s1", "method": "eo_baseline", "energy_only": True}
    (results / "runs/mol-painn-eo_baseline-n100-s1.json").write_text(json.dumps(energy_only))
    (results / "test_energy_variance.json").write_text(json.dumps({"mol-n100-s0": 25.0, "mol-n100-s1": 36.0}))
    run_script("scripts/consistency_form_report.py", "--results", str(results), "--runs", str(tmp_path / "none"))
    with (results / "tables/overview.csv").open() as handle:
        all_rows = list(csv.DictReader(handle))
    rows = {(row["method"], row["tag"]): row for row in all_rows if row["backbone"] == "PaiNN"}
    escn = [row for row in all_rows if row["backbone"] == "eSCN"]
    assert len(escn) == 1 and escn[0]["seeds"] == "1" and float(escn[0]["energy_rmse_mean"]) == 7.0
    assert float(rows["baseline", ""]["energy_rmse_mean"]) == pytest.approx(4.5)
    assert "Baseline (energy-only)" in (results / "tables/overview.md").read_text()
    trapezoid = rows["trapezoid", ""]
    assert float(trapezoid["energy_rmse_mean"]) == pytest.approx(2.5)
    assert rows["trapezoid", "long"]["seeds"] == "1" and float(rows["trapezoid", "long"]["energy_rmse_mean"]) == 1.0
    assert "Trapezoid, 120 steps" in (results / "tables/overview.md").read_text()
    assert float(trapezoid["energy_r2_mean"]) == pytest.approx(((1 - 4 / 25) + (1 - 9 / 36)) / 2)
    assert (results / "figures/front__mol-n100.png").stat().st_size > 1000
    assert (results / "learning_curves.csv").read_text().startswith("run,step,metric,value")


def test_benchmark_inference_times_direct_and_gradient_checkpoints(tmp_path):
    from pathlib import Path

    from trainer_helpers import make_trainer, prepare_ethanol, tiny_config

    data = prepare_ethanol(tmp_path)
    checkpoints = {}
    for label, direct in (("direct", True), ("gradient", False)):
        config = tiny_config(data, tmp_path / label, {"method": "baseline"}, direct_forces=direct)
        config["optim"]["max_epochs"] = 0
        trainer = make_trainer(config)
        checkpoints[label] = Path(trainer.save(checkpoint_file="best_checkpoint.pt", training_state=False))
        del trainer
    output = tmp_path / "inference.json"
    run_script(
        "scripts/benchmark_inference.py", "--data", str(data / "test"), "--batch-size", "4", "--repeats", "2",
        "--warmup", "1", "--json", str(output), *[f"--model={k}={v}" for k, v in checkpoints.items()],
    )  # fmt: skip
    rows = {row["model"]: row for row in json.loads(output.read_text())["rows"]}
    assert rows["direct"]["forces"] == "direct" and rows["gradient"]["forces"] == "gradient"
    assert all(row["median_ms_per_batch"] > 0 for row in rows.values())


def test_compare_levels_measures_the_cheap_level_against_its_relabelled_frames(tmp_path):
    """xTB frames relabelled with known shifts: the offset and the remaining errors come back exactly."""
    import numpy as np

    from piwsl.data.formats import read_rmd17

    frames = np.array([3, 0, 7])
    structures = read_rmd17(ETHANOL)
    energies = np.array([structures[i].energy for i in frames])
    shifts = np.array([1.0, -1.0, 0.0])  # on top of a constant offset of 100 kcal/mol
    forces = np.stack([structures[i].forces for i in frames]) + 0.5
    reference = dict(R=np.stack([structures[i].positions for i in frames]), E=energies - 100.0 + shifts)
    np.savez(tmp_path / "test.npz", **reference, F=forces, source_frames=frames, theory="toy")
    output = tmp_path / "levels.json"
    run_script("scripts/compare_levels.py", "rmd17", "--src", str(ETHANOL), "--dft", str(tmp_path / "test.npz"),
               "--json", str(output))  # fmt: skip
    result = json.loads(output.read_text())
    assert result["frames"] == 3 and result["energy_offset_kcal_mol"] == pytest.approx(100.0)
    assert result["energy_rmse_kcal_mol"] == pytest.approx(np.sqrt(2 / 3))
    assert result["forces_rmse_kcal_mol_A"] == pytest.approx(0.5)
    assert result["forces_mae_kcal_mol_A"] == pytest.approx(0.5)
    moved = dict(reference, R=reference["R"] + 0.01)
    np.savez(tmp_path / "moved.npz", **moved, source_frames=frames)
    command = [sys.executable, "scripts/compare_levels.py", "rmd17", "--src", str(ETHANOL)]
    failed = subprocess.run([*command, "--dft", str(tmp_path / "moved.npz")], capture_output=True, text=True, cwd=ROOT)
    assert failed.returncode == 2 and "frame 0 is not frame 3" in failed.stderr.strip().splitlines()[-1]


def test_finetune_report_tables_paired_changes_and_draws_curves(tmp_path):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    # energy RMSE per (method, seed): the fine-tuned baseline is the reference of the paired changes
    energies = {"ft_baseline": (2.0, 4.0), "ft_trapezoid": (1.0, 3.0), "scratch": (4.0, 8.0)}
    labels = {"ft_baseline": "Fine-tuned", "ft_trapezoid": "Fine-tuned + PIWSL", "scratch": "From scratch"}
    for method, per_seed in energies.items():
        for seed, energy in enumerate(per_seed):
            for size in (25, 50):
                result = {
                    "run": f"eth-painn-{method}-n{size}-s{seed}", "dataset": "eth", "backbone": "painn",
                    "backbone_label": "PaiNN", "method": method, "method_label": labels[method],
                    "train_size": size, "seed": seed, "config_hash": "h",
                    "test": {"energy_rmse": energy * 25 / size, "forces_rmse": 5.0, "num_structures": 3},
                }  # fmt: skip
                (results / "runs" / f"{result['run']}.json").write_text(json.dumps(result))
    # a pretraining run of another data set is not a fine-tuning row; a stale result is skipped
    pretrain = {"run": "mol-painn-pretrain-n100-s0", "dataset": "mol", "backbone": "painn", "backbone_label": "PaiNN",
                "method": "pretrain", "method_label": "Pretraining", "train_size": 100, "seed": 0,
                "config_hash": "h", "test": {"energy_rmse": 9.0, "forces_rmse": 9.0}}  # fmt: skip
    (results / "runs/mol-painn-pretrain-n100-s0.json").write_text(json.dumps(pretrain))
    runs = [p.stem for p in (results / "runs").glob("*.json")]
    hashes = {run: "h" for run in runs} | {"eth-painn-scratch-n50-s1": "new"}
    study = {"runs": runs, "methods": ["scratch", "ft_baseline", "ft_trapezoid"]}  # the order of the tables
    (results / "grid.json").write_text(json.dumps({"studies": [study], "config_hashes": hashes}))
    level = {"energy_rmse_kcal_mol": 0.7, "forces_rmse_kcal_mol_A": 5.5}
    (results / "gfn2xtb_vs_wb97x.json").write_text(json.dumps(level))
    process = run_script("scripts/finetune_report.py", "--results", str(results), "--dataset", "eth")
    assert "stale result eth-painn-scratch-n50-s1" in process.stderr
    with (results / "tables/finetune_curves.csv").open() as handle:
        rows = {(row["method"], row["N_train"]): row for row in csv.DictReader(handle)}
    assert set(rows) == {(m, n) for m in energies for n in ("25", "50")}
    trapezoid = rows["ft_trapezoid", "25"]
    assert float(trapezoid["energy_rmse_mean"]) == pytest.approx(2.0)
    # paired: seed 0 halves the error (+50 %), seed 1 gains 25 %
    assert float(trapezoid["energy_rmse_change_pct_mean"]) == pytest.approx(37.5)
    assert float(trapezoid["forces_rmse_change_pct_mean"]) == pytest.approx(0.0)
    assert rows["ft_baseline", "25"]["energy_rmse_change_pct_mean"] == ""
    assert rows["scratch", "50"]["seeds"] == "1" and float(rows["scratch", "50"]["energy_rmse_change_pct_mean"]) == -100
    table = (results / "tables/finetune_curves.md").read_text()
    assert "| PaiNN | Fine-tuned + PIWSL | 25 | 2 | 2.00 ± 1.41 |" in table
    assert (results / "figures/finetune_curves.png").stat().st_size > 10_000
    compact = (results / "tables/finetune_compact.md").read_text().splitlines()
    assert compact[4:7] == [
        "| From scratch | 6.00 / 5.00 | 2.00 / 5.00 (n=1) |",
        "| Fine-tuned | 3.00 / 5.00 | 1.50 / 5.00 |",
        "| Fine-tuned + PIWSL | 2.00 / 5.00 | 1.00 / 5.00 |",
    ]
    assert "The cheap level itself on the same test frames: 0.70 / 5.50" in compact[-1]
