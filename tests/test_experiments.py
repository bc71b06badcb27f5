"""Experiment tooling: grid expansion, resume/skip, aggregation, force rotation, calculator, SLURM, CLIs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from analytic import morse_energy_and_forces, random_molecules
from trainer_helpers import ETHANOL, ROOT, TINY_PAINN, make_trainer, prepare_ethanol, tiny_config

from piwsl.data.formats import read_rmd17
from piwsl.data.prepare import prepare_dataset
from piwsl.data.units import EV_TO_KCAL_PER_MOL
from piwsl.experiments import aggregate as agg
from piwsl.experiments import runner
from piwsl.experiments.grid import GridError, load_grid, parse_grid
from piwsl.experiments.rotation import force_jacobian, rotation

SCRIPTS = [
    "scripts/run_experiments.py",
    "scripts/aggregate.py",
    "scripts/hpo.py",
    "scripts/diagnostics/force_rotation.py",
    "scripts/diagnostics/bond_scan.py",
    "scripts/diagnostics/md_stability.py",
]


def load_script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid_content(tmp_path: Path, **study) -> dict:
    """A grid on the bundled ethanol test data with a tiny PaiNN: 2 methods x 2 N x 2 seeds."""
    model_file = tmp_path / "tiny_painn.yml"
    model_file.write_text(yaml.safe_dump({"model": TINY_PAINN}))
    return {
        "name": "tiny",
        "datasets": {
            "ethanol": {
                "format": "rmd17",
                "src": str(ETHANOL),
                "configs": "configs/rmd17",
                "val_size": 8,
                "test_size": 16,
                "overrides": {"optim": {"batch_size": 4, "eval_batch_size": 8, "num_workers": 0}},
            }
        },
        "backbones": {"painn": {"config": "painn", "model": str(model_file), "label": "PaiNN"}},
        "methods": {
            "baseline": {"config": "baseline"},
            "pitc_only": {"config": "piwsl", "label": "PITC", "overrides": {"piwsl": {"c_pisc": 0}}},
        },
        "defaults": {"seeds": [0, 1], "train_sizes": [16, 32], "max_steps": {16: 8, 32: 12}},
        "studies": {
            "main": {"datasets": ["ethanol"], "backbones": ["painn"], "methods": ["baseline", "pitc_only"]} | study
        },
    }


def paths_in(tmp_path: Path) -> runner.Paths:
    return runner.Paths(results_dir=tmp_path / "results", work_dir=tmp_path / "work", data_dir=tmp_path / "data")


# ------------------------------------------------------------------------------------------ grid
def test_grid_expands_the_product_with_steps_and_overrides(tmp_path):
    grid = parse_grid(grid_content(tmp_path, overrides={"optim": {"eval_every": 4}}))
    assert len(grid.runs) == 2 * 2 * 2
    names = [run.name for run in grid.runs]
    assert names[0] == "ethanol-painn-baseline-n16-s0" and "ethanol-painn-pitc_only-n32-s1" in names
    run = next(r for r in grid.runs if r.name == "ethanol-painn-pitc_only-n32-s1")
    assert run.max_steps == 12 and run.split_seed == 1 and run.data_name == "ethanol-n32-s1"
    assert run.overrides["piwsl"] == {"c_pisc": 0}
    assert run.overrides["optim"] == {"batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "eval_every": 4}
    assert run.base_config == ROOT / "configs/rmd17/painn_piwsl.yml"


def test_studies_share_identical_runs_and_reject_conflicting_ones(tmp_path):
    content = grid_content(tmp_path)
    content["studies"]["ablation"] = {"datasets": ["ethanol"], "backbones": ["painn"], "methods": ["baseline"]}
    grid = parse_grid(content)
    assert len(grid.runs) == 8 and len(grid.study_runs["ablation"]) == 4
    content["studies"]["ablation"]["max_steps"] = 100
    with pytest.raises(GridError, match="tag"):
        parse_grid(content)
    content["studies"]["ablation"]["tag"] = "long"
    assert len(parse_grid(content).runs) == 12


def test_grid_errors_name_the_key(tmp_path):
    content = grid_content(tmp_path)
    content["methods"]["baseline"]["overides"] = {}
    with pytest.raises(GridError, match="overides"):
        parse_grid(content)
    content = grid_content(tmp_path, methods=["baseline", "piwsl"])
    with pytest.raises(GridError, match="piwsl"):
        parse_grid(content)


def test_repository_grids_expand_onto_existing_configs():
    grids = sorted((ROOT / "experiments/grids").glob("*.yml"))
    assert any(path.name == "cpu_study.yml" for path in grids)
    for path in grids:
        grid = load_grid(path)
        missing = {str(run.base_config.relative_to(ROOT)) for run in grid.runs if not run.base_config.is_file()}
        assert not missing, f"{path.name}: missing base configs {sorted(missing)}"


def test_generated_config_includes_the_base_and_keeps_its_own_settings(tmp_path):
    content = grid_content(tmp_path)
    content["datasets"]["ethanol"]["configs"] = "configs/ani1x"
    content["methods"]["baseline"] = {"config": "piwsl_energy_only_gradient", "energy_only": True}
    run = parse_grid(content).runs[0]
    text = runner.render_config(run, paths_in(tmp_path))
    config = yaml.safe_load(text)
    assert config["includes"] == [str(ROOT / "configs/ani1x/painn_piwsl_energy_only_gradient.yml")]
    assert "direct_forces" not in config["model"], "the base config's own direct_forces: False must win"
    assert config["model"]["hidden_channels"] == TINY_PAINN["hidden_channels"]
    assert config["dataset"]["test"] is None and config["optim"]["max_steps"] == 8
    assert run.data_name.endswith("-energy_only") and "--energy-only" in runner.prepare_command(run, tmp_path)


# ------------------------------------------------------------------------------------------ skip / resume
def test_status_is_done_only_for_results_with_the_current_config_hash(tmp_path):
    paths = paths_in(tmp_path)
    run = parse_grid(grid_content(tmp_path)).runs[0]
    assert runner.run_status(run, paths) == "todo"
    _, _, config_hash = runner.write_config(run, paths)
    checkpoint = paths.checkpoint_dir(runner.run_id(run, config_hash)) / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert runner.run_status(run, paths) == "partial"
    runner.write_json_atomic(paths.result_file(run), {"config_hash": "stale"})
    assert runner.run_status(run, paths) == "partial"
    runner.write_json_atomic(paths.result_file(run), {"config_hash": config_hash})
    assert runner.run_status(run, paths) == "done"
    changed = parse_grid(grid_content(tmp_path, overrides={"optim": {"lr_initial": 5e-4}})).runs[0]
    assert runner.run_status(changed, paths) == "todo", "a changed config must not reuse results or checkpoints"


def test_local_runner_skips_finished_runs_and_goes_on_after_a_failure(tmp_path, monkeypatch):
    paths = paths_in(tmp_path)
    runs = parse_grid(grid_content(tmp_path)).runs[:3]
    _, _, config_hash = runner.write_config(runs[0], paths)
    runner.write_json_atomic(paths.result_file(runs[0]), {"config_hash": config_hash})
    executed = []

    def fake_execute(run, paths, options, on_start=None):
        executed.append(run.name)
        if run is runs[1]:
            raise runner.RunFailed(f"{run.name}: training exited with 1")
        return {"test": {"energy_rmse": 1.0, "forces_rmse": 2.0}, "steps": 8, "train_wall_s": 1.0}

    monkeypatch.setattr(runner, "execute_run", fake_execute)
    failures = runner.run_locally(runs, paths, runner.Options(progress=False))
    assert executed == [runs[1].name, runs[2].name]
    assert len(failures) == 1 and runs[1].name in failures[0]


def test_end_to_end_run_writes_results_and_is_skipped_when_rerun(tmp_path):
    grid_file = tmp_path / "grid.yml"
    content = grid_content(tmp_path)
    content["defaults"] |= {"seeds": [0], "train_sizes": [16], "max_steps": 8}
    content["defaults"]["overrides"] = {"optim": {"eval_every": 4}}
    grid_file.write_text(yaml.safe_dump(content))
    cli = load_script("scripts/run_experiments.py")
    arguments = ["--grid", str(grid_file), "--results-dir", str(tmp_path / "results"), "--work-dir"]
    arguments += [str(tmp_path / "work"), "--data-dir", str(tmp_path / "data"), "--no-progress", "--device", "cpu"]
    arguments += ["--only", "*-baseline-*"]
    assert cli.main(arguments) == 0
    result_file = tmp_path / "results/runs/ethanol-painn-baseline-n16-s0.json"
    result = json.loads(result_file.read_text())
    assert result["steps"] == 8 and result["seed"] == 0 and result["train_size"] == 16
    assert result["test"]["num_structures"] == 16 and math.isfinite(result["test"]["forces_rmse"])
    assert len(result["config_hash"]) == 12 and result["train_wall_s"] > 0
    assert result["command"][:2] == ["python", "main.py"]
    assert json.loads((tmp_path / "results/grid.json").read_text())["studies"][0]["name"] == "main"
    before = result_file.stat().st_mtime_ns
    assert cli.main(arguments) == 0
    assert result_file.stat().st_mtime_ns == before


def test_slurm_launcher_submits_one_array_task_per_unfinished_run(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls"
    for name, body in {"sbatch": f'cp "$1" {calls}.script; echo "Submitted batch job 4242"', "srun": "exit 0"}.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    paths = paths_in(tmp_path)
    runs = [run for run in parse_grid(grid_content(tmp_path)).runs if run.train_size == 16 and run.seed == 0]
    prepare_dataset(read_rmd17(ETHANOL), paths.data(runs[0]), 16, 8, 16, 0, ETHANOL, "rmd17")
    slurm = runner.SlurmOptions(partition="gpu", timeout_h=2, log_dir=tmp_path / "slurm")
    jobs = runner.submit_slurm(runs, paths, runner.Options(progress=False), slurm, "tiny")
    assert jobs == ["4242_0", "4242_1"]
    sbatch = Path(f"{calls}.script").read_text()
    assert "#SBATCH --array=0-1" in sbatch and "#SBATCH --partition=gpu" in sbatch and "#SBATCH --time=120" in sbatch


# ------------------------------------------------------------------------------------------ aggregation
def synthetic_results(tmp_path: Path) -> Path:
    """Results of 2 methods x 2 N x 3 seeds; PIWSL's RMSEs are 20 % lower than the baseline's per seed."""
    runs_dir = tmp_path / "runs"
    names = []
    for method, factor in (("baseline", 1.0), ("piwsl", 0.8)):
        for size in (100, 1000):
            for seed, energy in enumerate((1.0, 2.0, 3.0)):
                name = f"d-m-{method}-n{size}-s{seed}"
                names.append(name)
                result = {
                    "run": name,
                    "dataset": "d",
                    "backbone": "m",
                    "backbone_label": "Model",
                    "method": method,
                    "method_label": method.upper(),
                    "train_size": size,
                    "seed": seed,
                    "train_wall_s": 10.0,
                    "steps": 100,
                    "test": {
                        "energy_rmse": factor * energy * 1000 / size,
                        "energy_mae": 0.5,
                        "forces_rmse": factor * 10.0,
                        "forces_mae": 1.0,
                        "num_structures": 500,
                    },
                }
                runner.write_json_atomic(runs_dir / f"{name}.json", result)
    study = {
        "name": "s",
        "title": "Study",
        "datasets": ["d"],
        "backbones": ["m"],
        "methods": ["baseline", "piwsl"],
        "train_sizes": [100, 1000],
        "seeds": [0, 1, 2],
        "reference": "baseline",
        "runs": names,
    }
    runner.write_json_atomic(tmp_path / "grid.json", {"studies": [study]})
    return tmp_path


def test_mean_and_sample_std():
    stat_ = agg.mean_std([1.0, 2.0, 3.0])
    assert stat_.mean == 2.0 and stat_.std == pytest.approx(1.0) and stat_.count == 3
    assert agg.mean_std([4.0]).std == 0.0
    assert stat_.format(2) == "2.00 ± 1.00" and stat_.format(1, expected=4) == "2.0 ± 1.0 (n=3)"


def test_table_layout_cells_and_bold_best(tmp_path):
    results_dir = synthetic_results(tmp_path)
    results = agg.load_results(results_dir)
    (study,) = agg.load_studies(results_dir, results)
    table = agg.benchmark_table(study, "d", results)
    assert table.header == ["Model", "", "N=100: BASELINE", "N=100: PIWSL", "N=1000: BASELINE", "N=1000: PIWSL"]
    assert table.rows[0] == ["Model", "energy", "20.00 ± 10.00", "16.00 ± 8.00", "2.00 ± 1.00", "1.60 ± 0.80"]
    assert table.rows[1][:3] == ["", "force", "10.00 ± 0.00"]
    assert table.bold == {(0, 3), (0, 5), (1, 3), (1, 5)}
    markdown = table.to_markdown()
    assert "| Model | energy | 20.00 ± 10.00 | **16.00 ± 8.00** |" in markdown


def test_relative_gains_are_paired_per_seed_and_plotted(tmp_path):
    results_dir = synthetic_results(tmp_path)
    results = agg.load_results(results_dir)
    (study,) = agg.load_studies(results_dir, results)
    gains = agg.relative_gains(study, results)
    assert gains[("d", "m", "piwsl", 100)]["energy"].mean == pytest.approx(20.0)
    assert gains[("d", "m", "piwsl", 100)]["energy"].std == pytest.approx(0.0, abs=1e-9)
    text = agg.aggregate(results_dir, tmp_path / "out")
    assert "+20.0 ± 0.0" in text
    figure = tmp_path / "out/figures/gain_s__d.png"
    assert figure.stat().st_size > 10_000
    rows = (tmp_path / "out/tables/summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("dataset,backbone,method,train_size,seeds")


# ------------------------------------------------------------------------------------------ rotation
def test_rotation_vanishes_for_conservative_forces_and_not_for_a_rotational_field():
    positions, index = random_molecules([6])
    positions = positions.numpy()

    def conservative(geometries: np.ndarray) -> np.ndarray:
        flat = torch.as_tensor(geometries.reshape(-1, 3))
        batch = torch.arange(len(geometries)).repeat_interleave(positions.shape[0])
        return morse_energy_and_forces(flat, batch, len(geometries))[1].numpy().reshape(geometries.shape)

    measures = rotation(force_jacobian(conservative, positions))
    assert measures.asymmetry < 1e-6 and measures.total_rotation < 1e-4

    omega = 3.0

    def rotational(geometries: np.ndarray) -> np.ndarray:
        x, y = geometries[..., 0], geometries[..., 1]
        return np.stack([-omega * y, omega * x, np.zeros_like(x)], axis=-1)

    measures = rotation(force_jacobian(rotational, positions))
    assert measures.asymmetry == pytest.approx(1.0)
    np.testing.assert_allclose(measures.curl, np.tile([0.0, 0.0, 2 * omega], (6, 1)), atol=1e-6)
    assert measures.total_rotation == pytest.approx(2 * omega * 6)


# ------------------------------------------------------------------------------------------ calculator
def test_calculator_matches_evaluate_on_a_trained_checkpoint(tmp_path):
    from ase.md.verlet import VelocityVerlet

    from piwsl.calculator import PIWSLCalculator
    from piwsl.evaluate import evaluate, load_trainer
    from piwsl.experiments.diagnostics import load_structures
    from piwsl.experiments.md import run_md

    data = prepare_ethanol(tmp_path)
    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "piwsl"}))
    trainer.train()
    checkpoint = Path(trainer.save(checkpoint_file="best_checkpoint.pt", training_state=False))
    del trainer
    errors = evaluate(load_trainer(checkpoint), data / "test", progress=False)
    calculator = PIWSLCalculator(checkpoint, batch_size=5)
    structures = load_structures(data / "test", list(range(16)))
    energies, forces = calculator.predict(structures)
    from fairchem.core.datasets import LmdbDataset

    labels = LmdbDataset({"src": str(data / "test")})
    reference_energy = np.array([labels[i].energy for i in range(16)])
    reference_forces = np.concatenate([labels[i].forces.numpy() for i in range(16)])
    assert np.sqrt(np.mean((energies - reference_energy) ** 2)) == pytest.approx(errors.energy_rmse, rel=1e-4)
    assert np.sqrt(np.mean((np.concatenate(forces) - reference_forces) ** 2)) == pytest.approx(
        errors.forces_rmse, rel=1e-4
    )
    atoms = structures[0].copy()
    atoms.calc = calculator
    assert atoms.get_potential_energy() == pytest.approx(energies[0] / EV_TO_KCAL_PER_MOL, rel=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), forces[0] / EV_TO_KCAL_PER_MOL, rtol=1e-4, atol=1e-6)
    VelocityVerlet(atoms, timestep=0.1).run(2)
    trajectory = run_md(structures[0], calculator, "nve", temperature=300, timestep=0.5, steps=10, record_every=1)
    assert len(trajectory.times) >= 1 and (trajectory.failed or len(trajectory.times) == 11)


# ------------------------------------------------------------------------------------------ command lines
@pytest.mark.parametrize("path", SCRIPTS)
def test_every_script_explains_every_flag(path, capsys):
    parser = load_script(path).get_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in parser._actions:
        assert action.help, f"{path}: {action.option_strings or action.dest} has no help"
        assert all(option in text for option in action.option_strings)


def test_aggregate_cli_reports_a_missing_results_dir(tmp_path, capsys):
    assert load_script("scripts/aggregate.py").main([str(tmp_path)]) == 2
    assert "no results" in capsys.readouterr().err


def test_scripts_run_as_commands():
    import subprocess

    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/aggregate.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "results_dir" in result.stdout
