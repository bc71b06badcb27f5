"""The paper-regime study's tooling: per-method step caps, equal wall-clock runs, two test splits, selection."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from test_experiments import grid_content, load_script, paths_in, synthetic_results
from trainer_helpers import ROOT

from piwsl.experiments import aggregate as agg
from piwsl.experiments import runner
from piwsl.experiments.grid import GridError, load_grid, parse_grid

ANI1X_SMALL = ROOT / "tests/data/ani1x_like_small.h5"


def wall_clock_grid(tmp_path: Path) -> dict:
    content = grid_content(tmp_path)
    content["methods"]["baseline_wall"] = {
        "config": "baseline",
        "label": "Baseline, PITC's time",
        "max_steps": 50,
        "wall_clock_from": "pitc_only",
    }
    content["studies"]["main"]["methods"] = ["baseline", "pitc_only", "baseline_wall"]
    return content


# ------------------------------------------------------------------------------------------ grid
def test_a_method_sets_its_own_step_cap_and_names_its_wall_clock_source(tmp_path):
    grid = parse_grid(wall_clock_grid(tmp_path))
    runs = {run.name: run for run in grid.runs}
    run = runs["ethanol-painn-baseline_wall-n32-s1"]
    assert run.max_steps == 50 and runs["ethanol-painn-pitc_only-n32-s1"].max_steps == 12
    assert run.wall_clock_source == runs["ethanol-painn-pitc_only-n32-s1"]
    assert run.describe()["wall_clock_from"] == "ethanol-painn-pitc_only-n32-s1"


def test_wall_clock_sources_must_be_runs_of_the_grid(tmp_path):
    content = wall_clock_grid(tmp_path)
    content["studies"]["main"]["methods"] = ["baseline", "baseline_wall"]
    with pytest.raises(GridError, match="wall_clock_from = 'pitc_only' is not a method of study main"):
        parse_grid(content)
    content = wall_clock_grid(tmp_path)
    content["methods"]["baseline_wall"]["wall_clock_from"] = "pitc"
    with pytest.raises(GridError, match=r"methods\.baseline_wall\.wall_clock_from = 'pitc'; allowed: .*pitc_only"):
        parse_grid(content)


# ------------------------------------------------------------------------------------------ runner
def test_an_equal_wall_clock_run_waits_for_its_source_then_gets_its_training_time(tmp_path, monkeypatch, capsys):
    paths = paths_in(tmp_path)
    runs = {run.name: run for run in parse_grid(wall_clock_grid(tmp_path)).runs}
    run, source = runs["ethanol-painn-baseline_wall-n16-s0"], runs["ethanol-painn-pitc_only-n16-s0"]
    assert runner.run_status(run, paths) == f"waiting for {source.name}"
    executed = []
    monkeypatch.setattr(runner, "execute_run", lambda run, *args, **kwargs: executed.append(run.name))
    failures = runner.run_locally([run], paths, runner.Options(progress=False))
    assert executed == [] and "not run, waiting for ethanol-painn-pitc_only-n16-s0" in failures[0]
    assert not paths.failure_file(run).exists()
    _, _, source_hash = runner.write_config(source, paths)
    finished = {"config_hash": source_hash, "train_wall_s": 99.0, "convergence": {"training_s": 42.25}}
    runner.write_json_atomic(paths.result_file(source), finished)
    assert runner.run_status(run, paths) == "todo"
    config = yaml.safe_load(runner.render_config(run, paths))
    assert config["optim"]["max_wall_seconds"] == 42.2 and config["optim"]["max_steps"] == 50
    runner.write_json_atomic(paths.result_file(source), {"config_hash": source_hash, "train_wall_s": 99.0})
    assert yaml.safe_load(runner.render_config(run, paths))["optim"]["max_wall_seconds"] == 99.0  # an older result
    runner.write_json_atomic(paths.result_file(source), finished | {"config_hash": "stale"})
    assert runner.run_status(run, paths).startswith("waiting")


def test_a_molecule_split_run_is_tested_on_both_test_splits_and_records_how_it_stopped(tmp_path):
    content = grid_content(tmp_path)
    content["datasets"] = {
        "molecules": {
            "format": "ani1x",
            "src": str(ANI1X_SMALL),
            "configs": "configs/ani1x",
            "val_size": 8,
            "test_size": 16,
            "split_seed": 2,  # a split whose training molecules hold every element of the test molecules
            "prepare_args": ["--split-by", "molecule", "--test-conformations", "8", "--self-energies", "none"],
            "overrides": {"optim": {"batch_size": 4, "eval_batch_size": 8, "num_workers": 0}},
        }
    }
    content["defaults"] = {
        "seeds": [0],
        "train_sizes": [16],
        "max_steps": 40,
        "overrides": {
            "optim": {"eval_every": 2, "early_stopping": {"patience": 1, "min_delta": 0.99}},
            "evaluation_metrics": {"primary_metric": "energy_force_nmae"},
        },
    }
    content["studies"]["main"] |= {"datasets": ["molecules"], "methods": ["baseline"], "reference": None}
    grid_file = tmp_path / "grid.yml"
    grid_file.write_text(yaml.safe_dump(content))
    cli = load_script("scripts/run_experiments.py")
    arguments = ["--grid", str(grid_file), "--results-dir", str(tmp_path / "results"), "--work-dir"]
    arguments += [str(tmp_path / "work"), "--data-dir", str(tmp_path / "data"), "--no-progress", "--device", "cpu"]
    assert cli.main(arguments) == 0
    result = json.loads((tmp_path / "results/runs/molecules-painn-baseline-n16-s0.json").read_text())
    assert result["test_splits"] == ["test", "test_conformations"] and result["split_by"] == "molecule"
    assert result["test"]["num_structures"] >= 16
    assert 1 <= result["test_conformations"]["num_structures"] <= 8
    assert math.isfinite(result["test_conformations"]["energy_rmse"])
    convergence = result["convergence"]
    assert convergence["stopped_by"] == "early_stopping" and result["steps"] == 4  # validations at 2 and 4
    assert convergence["training_s"] > 0 and "energy_force_nmae" in result["val_metrics"]
    assert result["cpu"].endswith(" cores")  # training times are comparable on the same CPU only
    curve = result["val_curve"]  # the learning curve outlives the work directory
    assert curve["energy_force_nmae"]["step"] == [2, 4] and len(curve["forces_mae"]["value"]) == 2
    assert curve["energy_force_nmae"]["value"][0] == pytest.approx(convergence["best"])
    best_value = min(curve["energy_force_nmae"]["value"])  # the tested model: the best checkpoint's validation
    assert (
        curve["energy_force_nmae"]["step"][curve["energy_force_nmae"]["value"].index(best_value)]
        == (convergence["best_checkpoint_step"])
    )
    shutil.rmtree(tmp_path / "work")
    text = agg.aggregate(tmp_path / "results", tmp_path / "out")
    assert (tmp_path / "out/figures/val_curves__main__molecules__painn.png").stat().st_size > 10_000
    assert "test (unseen molecules)" in text and "test_conformations (unseen conformations of training" in text
    assert (tmp_path / "out/tables/main__molecules__test_conformations.md").is_file()


# ------------------------------------------------------------------------------------------ aggregation
def test_aggregation_makes_a_table_and_gains_per_test_split_and_reads_old_results(tmp_path):
    results_dir = synthetic_results(tmp_path)
    for path in (results_dir / "runs").glob("*.json"):
        result = json.loads(path.read_text())
        halved = {key: value / 2 if isinstance(value, float) else value for key, value in result["test"].items()}
        result |= {"test_splits": ["test", "test_conformations"], "split_by": "molecule"}
        runner.write_json_atomic(path, result | {"test_conformations": halved})
    agg.aggregate(results_dir, tmp_path / "out")
    tables = tmp_path / "out/tables"
    unseen_molecules = (tables / "s__d.md").read_text()
    unseen_conformations = (tables / "s__d__test_conformations.md").read_text()
    assert "test (unseen molecules)" in unseen_molecules and "20.00 ± 10.00" in unseen_molecules
    assert "10.00 ± 5.00" in unseen_conformations
    assert "+20.0 ± 0.0" in (tables / "s__gains__test_conformations.md").read_text()
    rows = (tables / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4 and rows[0].endswith(",split")
    old = synthetic_results(tmp_path / "old")  # results without test_splits: one table as before
    agg.aggregate(old, tmp_path / "old_out")
    assert sorted(p.name for p in (tmp_path / "old_out/tables").glob("s__d*.md")) == ["s__d.md"]


# ------------------------------------------------------------------------------------------ tuned baseline
def sweep_results(tmp_path: Path, values: dict[str, dict[int, float]], complete: bool = True) -> Path:
    """Results of a sweep study: method -> N_train -> validation energy_force_nmae (seed 0)."""
    names = []
    for method, per_size in values.items():
        for size, value in per_size.items():
            name = f"d-m-{method}-n{size}-s0"
            names.append(name)
            result = {"run": name, "config_hash": "current", "dataset": "d", "backbone": "m", "method": method,
                      "train_size": size, "seed": 0, "train_wall_s": 1.0, "steps": 10,
                      "val_metrics": {"energy_force_nmae": value, "forces_mae": 100.0 * value},
                      "test": {"energy_rmse": 1.0, "forces_rmse": 1.0, "num_structures": 5}}  # fmt: skip
            runner.write_json_atomic(tmp_path / "runs" / f"{name}.json", result)
    study = {"name": "sweep", "title": "Sweep", "datasets": ["d"], "backbones": ["m"], "methods": list(values),
             "train_sizes": [100, 1000], "seeds": [0], "reference": "baseline", "runs": names,
             "labels": {"methods": {m: m.upper() for m in values}}}  # fmt: skip
    hashes = dict.fromkeys(names, "current")
    if not complete:
        hashes[names[-1]] = "newer"  # its result is stale
    runner.write_json_atomic(tmp_path / "grid.json", {"studies": [study], "config_hashes": hashes})
    return tmp_path


def test_the_tuned_setting_is_the_lowest_mean_relative_validation_error(tmp_path, capsys):
    values = {
        "baseline": {100: 1.0, 1000: 0.50},  # score (1.25 + 1) / 2 = 1.125
        "e10": {100: 0.9, 1000: 0.50},  # (1.125 + 1) / 2 = 1.0625: never best at N 100, but the best overall
        "e100": {100: 0.8, 1000: 0.75},  # best at N 100, 50 % worse at 1000: (1 + 1.5) / 2 = 1.25
    }
    results_dir = sweep_results(tmp_path, values)
    cli = load_script("scripts/select_tuned_baseline.py")
    assert cli.main([str(results_dir)]) == 0
    output = capsys.readouterr().out
    assert "chosen: e10 (E10)" in output and "`baseline_tuned: *e10`" in output
    record = json.loads((results_dir / "tuned_baseline.json").read_text())
    assert record["chosen"] == "e10" and [s["method"] for s in record["scores"]] == ["e10", "baseline", "e100"]
    assert record["scores"][0]["score"] == pytest.approx((0.9 / 0.8 + 1.0) / 2)
    assert cli.main([str(results_dir), "--metric", "forces_mae", "--out", str(tmp_path / "f.json")]) == 0
    assert json.loads((tmp_path / "f.json").read_text())["chosen"] == "e10"


def test_near_ties_go_to_the_paper_setting_and_an_incomplete_sweep_is_refused(tmp_path, capsys):
    from piwsl.experiments.tuning import select

    close = sweep_results(tmp_path / "tied", {"e10": {100: 1.0, 1000: 1.0}, "baseline": {100: 1.0, 1000: 1.018}})
    assert select(close, "sweep").chosen.method == "baseline"  # 0.9 % worse: within the 1 % tolerance
    assert select(close, "sweep", tolerance=0.005).chosen.method == "e10"
    partial = sweep_results(tmp_path / "partial", {"baseline": {100: 1.0, 1000: 1.0}, "e10": {100: 1.0, 1000: 1.0}},
                            complete=False)  # fmt: skip
    cli = load_script("scripts/select_tuned_baseline.py")
    assert cli.main([str(partial)]) == 2
    assert "not complete: no current results for e10 at N_train 1000" in capsys.readouterr().err
    assert cli.main([str(partial), "--study", "main"]) == 2
    assert "no study 'main'" in capsys.readouterr().err


def test_the_check_says_whether_the_grid_uses_the_chosen_setting(tmp_path, capsys):
    grid = str(ROOT / "experiments/grids/paper_regime.yml")
    cli = load_script("scripts/select_tuned_baseline.py")
    # the committed grid's tuned baseline is the sweep's choice, E 10 with the cosine schedule
    chosen = sweep_results(
        tmp_path / "chosen", {"baseline": {100: 2.0, 1000: 2.0}, "e10_cosine": {100: 1.0, 1000: 1.0}}
    )
    assert cli.main([str(chosen), "--grid", grid]) == 0
    paper = sweep_results(tmp_path / "paper", {"baseline": {100: 1.0, 1000: 1.0}, "e10_cosine": {100: 2.0, 1000: 2.0}})
    assert cli.main([str(paper), "--grid", grid]) == 3
    assert "set `baseline_tuned: *baseline` there" in capsys.readouterr().err


def test_every_run_of_the_paper_regime_grid_has_a_valid_config(tmp_path):
    from piwsl.config import PIWSLConfig
    from piwsl.config_checks import check_config
    from piwsl.convergence import StoppingRules

    grid = load_grid(ROOT / "experiments/grids/paper_regime.yml")
    paths = paths_in(tmp_path)
    waiting = [run for run in grid.runs if run.wall_clock_source is not None]
    for run in waiting:  # their sources finished, with a training time
        _, _, source_hash = runner.write_config(run.wall_clock_source, paths)
        finished = {"config_hash": source_hash, "train_wall_s": 1.0, "convergence": {"training_s": 3600.0}}
        runner.write_json_atomic(paths.result_file(run.wall_clock_source), finished)
    metrics = set()
    for run in grid.runs:
        config = runner.resolved_config(runner.render_config(run, paths))
        check_config(config)
        PIWSLConfig.from_dict(config.get("piwsl"))
        rules = StoppingRules.from_optim(config["optim"])
        assert (rules.early_stopping is None) == (run.method.name == "baseline_wall"), run.name
        assert (rules.max_wall_seconds == 3600.0) == (run.method.name == "baseline_wall"), run.name
        metrics.add((run.method.energy_only, config["evaluation_metrics"]["primary_metric"]))
    assert metrics == {(False, "energy_force_nmae"), (True, "energy_mae")}
    assert len(waiting) == 2  # N_train 100 and 1000, seed 0, direct forces only


# ------------------------------------------------------------------------------------------ the lanes
@pytest.mark.parametrize("tuned_status", [0, 3])
def test_painn_lane_skips_only_the_tuned_runs_until_the_choice_is_in_the_grid(tmp_path, tuned_status):
    import subprocess

    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python"  # logs each command; select_tuned_baseline.py answers with tuned_status
    stand_in.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {calls}\n'
        f'case "$1" in *select_tuned_baseline.py) exit {tuned_status} ;; esac\n'
    )
    stand_in.chmod(0o755)
    environment = {"PATH": "/usr/bin:/bin", "PAPER_REGIME_PYTHON": str(stand_in), "PAPER_REGIME_OUT": str(tmp_path)}
    lane = subprocess.run(["bash", str(ROOT / "experiments/paper_regime.sh"), "painn"], env=environment,
                          capture_output=True, text=True)  # fmt: skip
    commands = calls.read_text().splitlines()
    assert lane.returncode == tuned_status, lane.stderr
    assert "--study sweep --only *-n1000-s0" in commands[0] and "--study sweep --only *-n100-s0" in commands[1]
    assert "select_tuned_baseline.py" in commands[2]
    assert [command.split("--study ")[-1].split(" ")[0] for command in commands[-4:]] == [
        "energy_only",
        "energy_only_seeds",
        "main_gradient_seeds",
        "all_methods_seeds",  # Taylor and weak labels only: the tuned baseline's runs are main's
    ]
    assert "baseline" not in commands[-1]
    blocks = commands[3:-4]
    order = [(block.split("-n")[-1].split("-")[0], block.split("-s")[-1][0]) for block in blocks]
    assert order == [("1000", "0"), ("100", "0"), ("1000", "1"), ("1000", "2"), ("100", "1"), ("100", "2")]
    assert all("--study main --study main_vs_tuned --study all_methods" in block for block in blocks)
    if tuned_status == 0:
        assert "--only molecules-painn-*-n1000-s0" in blocks[0]
    else:
        assert "*" not in " ".join(blocks) and "baseline_tuned" not in " ".join(blocks)
        assert "--only molecules-painn-trapezoid-n1000-s0" in blocks[0]
        assert "write the chosen setting into" in lane.stderr


# ------------------------------------------------------------------------------------------ the report
def test_report_puts_both_test_sets_and_both_references_side_by_side(tmp_path, capsys):
    """Trapezoid is 20 % better than the paper's baseline and 10 % better than the tuned one on unseen
    molecules, 50 % better than both on unseen conformations; the tuned baseline reuses seed 0's sweep run."""
    energies = {"baseline": 10.0, "baseline_tuned": 20.0 / 2.25, "trapezoid": 8.0, "taylor": 9.0}
    names = []
    for method, energy in energies.items():
        for seed in (0,) if method == "taylor" else (0, 1):  # Taylor: one seed
            name = f"molecules-painn-{method}-n1000-s{seed}"
            names.append(name)
            conformations = 2.0 if method == "trapezoid" else 4.0
            minutes = (seed + 1) * (3 if method == "trapezoid" else 1)  # trapezoid: 3x the baseline's time
            ended = {"stopped_by": "early_stopping" if seed else "max_steps", "training_s": 60.0 * minutes,
                     "best_checkpoint_step": 500 * (seed + 1)}  # fmt: skip
            result = {"run": name, "config_hash": "current", "dataset": "molecules", "backbone": "painn",
                      "backbone_label": "PaiNN", "method": method, "method_label": method.title(),
                      "train_size": 1000, "seed": seed, "train_wall_s": 999.0, "steps": 1000 * (seed + 1),
                      "convergence": ended, "test_splits": ["test", "test_conformations"],
                      "test": {"energy_rmse": energy * (1 + seed), "forces_rmse": 5.0},
                      "test_conformations": {"energy_rmse": conformations, "forces_rmse": 5.0}}  # fmt: skip
            if method == "baseline_tuned" and seed == 0:
                result["reused_from"] = "molecules-painn-e10-n1000-s0"
            if method == "baseline_tuned" and seed == 1:  # another CPU than the baseline's: not paired in time
                result["cpu"] = "a faster CPU, 2 cores"
            runner.write_json_atomic(tmp_path / "runs" / f"{name}.json", result)
    energy_only = {"run": "molecules-painn-eo_baseline-n1000-s0", "config_hash": "current", "dataset": "molecules",
                   "backbone": "painn", "backbone_label": "PaiNN", "method": "eo_baseline", "method_label": "Baseline",
                   "method_group": "energy-only", "energy_only": True, "train_size": 1000, "seed": 0,
                   "train_wall_s": 99.0, "steps": 100, "test": {"energy_rmse": 12.0, "forces_rmse": 50.0}}  # fmt: skip
    runner.write_json_atomic(tmp_path / "runs" / f"{energy_only['run']}.json", energy_only)
    names.append(energy_only["run"])
    study = {"name": "main", "methods": [*energies, "eo_baseline"], "runs": names, "reference": "baseline",
             "labels": {"methods": {"taylor": "Taylor form"}}}  # the grid's name wins over the result's  # fmt: skip
    runner.write_json_atomic(
        tmp_path / "grid.json", {"studies": [study], "config_hashes": dict.fromkeys(names, "current")}
    )
    cli = load_script("scripts/paper_regime_report.py")
    assert cli.main(["--results", str(tmp_path)]) == 0
    gains = (tmp_path / "tables/paper_regime_gains.csv").read_text().splitlines()
    assert len(gains) == 3  # the references get no row
    assert gains[1].startswith("PaiNN,Trapezoid,1000,2 / 2,")  # seeds paired with each reference
    assert gains[2].startswith("PaiNN,Taylor form,1000,1 / 1,+10.0,")  # one seed: no spread
    cells = gains[1].split(",")[4:]  # molecules (paper E, F; tuned E, F), then conformations
    assert cells[0] == "+20.0 ± 0.0" and cells[1] == "+0.0 ± 0.0" and cells[2] == "+10.0 ± 0.0"
    assert cells[4] == cells[6] == "+50.0 ± 0.0"
    errors = (tmp_path / "tables/paper_regime_errors.md").read_text()
    assert "| PaiNN | Baseline | 1000 | 2 | 15.00 ± 7.07 | 5.00 ± 0.00 | 4.00 ± 0.00 |" in errors
    assert "| PaiNN | Taylor form | 1000 | 1 | 9.00 | 5.00 | 4.00 | 5.00 |" in errors  # one seed: no spread
    assert "| PaiNN | energy-only: Baseline | 1000 | 1 | 12.00 | 50.00 | — | — |" in errors
    convergence = (tmp_path / "tables/paper_regime_convergence.md").read_text()
    assert "| PaiNN | Trapezoid | 1000 | 4.5 ± 2.1 | 3.00 ± 0.00 (baseline) | 0.180 ± 0.000 | 1000–2000 (c,e) |" in (
        convergence
    )
    assert "| PaiNN | Baseline | 1000 | 1.5 ± 0.7 | reference |" in convergence
    assert "| PaiNN | Taylor form | 1000 | 1.0 | 1.00 (baseline) |" in convergence  # seed 0 only
    assert "| PaiNN | Baseline_Tuned | 1000 | 1.5 ± 0.7 | 1.00 (baseline, 1 of 2 seeds) |" in convergence
    # trained: 60 + 120 s (baseline), 120 (tuned seed 1), 180 + 360 (trapezoid), 60 (Taylor), 99 (energy-only)
    assert "The whole grid: 7 runs trained, 0.28 hours of training time" in convergence
    assert "1 more results copied" in convergence
    assert cli.main(["--results", str(tmp_path / "nothing")]) == 2
    assert "grid.json not found" in capsys.readouterr().err
