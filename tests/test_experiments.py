"""Experiment tooling: grid expansion, resume/skip, aggregation, force rotation, calculator, SLURM, CLIs."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from analytic import morse_energy_and_forces, random_molecules
from ase.calculators.calculator import Calculator, all_changes
from trainer_helpers import ETHANOL, ROOT, TINY_PAINN, make_trainer, prepare_ethanol, tiny_config

from piwsl.data.formats import read_rmd17
from piwsl.data.prepare import prepare_dataset
from piwsl.data.units import EV_TO_KCAL_PER_MOL
from piwsl.experiments import aggregate as agg
from piwsl.experiments import runner
from piwsl.experiments.diagnostics import DiagnosticInputError, diagnostic_main
from piwsl.experiments.grid import GridError, load_grid, parse_grid
from piwsl.experiments.md import Trajectory, stability_row
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


def test_test_size_per_training_size_reaches_prepare_data(tmp_path):
    content = grid_content(tmp_path)
    content["datasets"]["ethanol"]["test_size"] = {16: 20, 32: 12}
    runs = {run.train_size: run for run in parse_grid(content).runs if run.seed == 0}
    for train_size, expected in ((16, 20), (32, 12)):
        run = runs[train_size]
        assert runner.split_request(run)["test_size"] == expected
        command = runner.prepare_command(run, tmp_path / "out")
        assert command[command.index("--test-size") + 1] == str(expected)
    content["datasets"]["ethanol"]["test_size"] = {16: 20}
    with pytest.raises(GridError, match="test_size.*N_train 32"):
        parse_grid(content)


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
    assert stat.S_IMODE(paths.result_file(run).stat().st_mode) == 0o644, "results must be readable by others"


def test_a_result_of_another_data_split_is_not_current(tmp_path, capsys):
    """Split sizes live in the grid's data set, not in the run's config: the results record the split."""
    paths = paths_in(tmp_path)
    run = parse_grid(grid_content(tmp_path)).runs[0]
    _, _, config_hash = runner.write_config(run, paths)
    finished = {"run": run.name, "config_hash": config_hash, "split_request": runner.recorded_split_request(run)}
    runner.write_json_atomic(paths.result_file(run), finished)
    assert runner.run_status(run, paths) == "done"
    assert (
        finished["split_request"]["source"] == "tests/data/rmd17_ethanol_gfn2xtb.npz"
    )  # portable, as results are committed
    content = grid_content(tmp_path)
    content["datasets"]["ethanol"]["val_size"] = 6
    edited = parse_grid(content).runs[0]
    assert runner.config_hash(edited, paths) == config_hash and runner.run_status(edited, paths) == "todo"
    grid = runner.grid_description(parse_grid(content), paths)
    current, skipped = agg.current_results([finished], grid)
    assert current == [] and "its data split differs from the grid's" in skipped[0]
    old = {key: value for key, value in finished.items() if key != "split_request"}  # an older runner's result
    assert agg.current_results([old], grid)[0] == [old]


def test_a_checkpoint_of_another_data_split_is_not_resumed(tmp_path):
    run = parse_grid(grid_content(tmp_path)).runs[0]
    checkpoint_dir = tmp_path / "checkpoints/run-hash"
    runner.check_checkpoint_split(run, checkpoint_dir)  # the first attempt records its split
    runner.check_checkpoint_split(run, checkpoint_dir)  # a resumed attempt of the same split goes on
    content = grid_content(tmp_path)
    content["datasets"]["ethanol"]["val_size"] = 6
    with pytest.raises(runner.PreparedDataMismatch, match="another data split \\(val_size changed"):
        runner.check_checkpoint_split(parse_grid(content).runs[0], checkpoint_dir)


def test_a_method_with_another_runs_config_reuses_its_results_without_training(tmp_path, monkeypatch):
    content = grid_content(tmp_path)
    content["methods"]["baseline_tuned"] = dict(content["methods"]["baseline"], label="Tuned")
    content["studies"]["main"]["methods"].append("baseline_tuned")
    paths = paths_in(tmp_path)
    runs = {run.name: run for run in parse_grid(content).runs}
    source, twin = runs["ethanol-painn-baseline-n16-s0"], runs["ethanol-painn-baseline_tuned-n16-s0"]
    other_seed = runs["ethanol-painn-baseline_tuned-n16-s1"]
    _, _, config_hash = runner.write_config(source, paths)
    assert runner.write_config(twin, paths)[2] == config_hash
    finished = source.describe() | {"config_hash": config_hash, "test": {"energy_rmse": 1.5}, "steps": 8}
    runner.write_json_atomic(paths.result_file(source), finished)
    assert runner.run_status(twin, paths).startswith("todo (same config as ethanol-painn-baseline-n16-s0")
    assert runner.run_status(other_seed, paths) == "todo", "another seed is another config"
    monkeypatch.setattr(runner, "_train", lambda *args: pytest.fail("an identical run must not be trained"))
    result = runner.execute_run(twin, paths, runner.Options(progress=False))
    assert result["reused_from"] == source.name and result["test"] == {"energy_rmse": 1.5}
    assert result["method"] == "baseline_tuned" and result["method_label"] == "Tuned"
    assert runner.read_result(paths.result_file(twin)) == result
    assert runner.run_status(twin, paths) == "done"
    assert runner.identical_finished_run(other_seed, paths, config_hash) is not None
    assert runner.identical_finished_run(source, paths, "another hash") is None


def test_list_writes_nothing_and_grid_json_holds_each_runs_config_hash(tmp_path, capsys):
    grid_file = tmp_path / "grid.yml"
    grid_file.write_text(yaml.safe_dump(grid_content(tmp_path)))
    work, results = tmp_path / "work", tmp_path / "results"
    arguments = ["--grid", str(grid_file), "--results-dir", str(results), "--work-dir", str(work)]
    assert load_script("scripts/run_experiments.py").main([*arguments, "--list"]) == 0
    assert capsys.readouterr().out.count("todo") == 8
    assert not work.exists() and not results.exists()
    paths = paths_in(tmp_path)
    grid = parse_grid(grid_content(tmp_path))
    hashes = runner.grid_description(grid, paths)["config_hashes"]
    assert hashes == {run.name: runner.write_config(run, paths)[2] for run in grid.runs}


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


def test_any_error_of_a_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    paths = paths_in(tmp_path)
    runs = parse_grid(grid_content(tmp_path)).runs[:2]
    out_of_memory = torch.cuda.OutOfMemoryError("CUDA out of memory")

    def failing_prepare(run, paths):
        raise out_of_memory if run is runs[0] else KeyError("split_sizes")

    monkeypatch.setattr(runner, "prepare_split", failing_prepare)
    with pytest.raises(runner.RunFailed, match="OutOfMemoryError") as failure:
        runner.execute_run(runs[0], paths, runner.Options(progress=False))
    assert failure.value.__cause__ is out_of_memory
    failures = runner.run_locally(runs, paths, runner.Options(progress=False))
    assert len(failures) == 2 and "KeyError" in failures[1]
    for run in runs:
        record = json.loads(paths.failure_file(run).read_text())
        assert record["run"] == run.name and ("OutOfMemoryError" in record["error"] or "KeyError" in record["error"])


def test_a_run_another_runner_holds_is_refused_without_a_failure_record(tmp_path):
    paths = paths_in(tmp_path)
    run = parse_grid(grid_content(tmp_path)).runs[0]
    _, _, config_hash = runner.write_config(run, paths)
    with runner.run_lock(run, paths.checkpoint_dir(runner.run_id(run, config_hash))):
        with pytest.raises(runner.RunLocked, match=run.name):
            runner.execute_run(run, paths, runner.Options(progress=False))
    assert not paths.failure_file(run).exists()


def test_training_attempts_are_recorded_per_run_id_also_when_failed_or_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.05)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background (nohup)
    paths = paths_in(tmp_path)
    run = parse_grid(grid_content(tmp_path)).runs[0]
    timing, other = paths.timing_file(runner.run_id(run, "a" * 12)), paths.timing_file(runner.run_id(run, "b" * 12))
    with pytest.raises(runner.RunFailed, match="exited with 3"):
        runner._train(run, paths, [sys.executable, "-c", "import sys; sys.exit(3)"], timing)
    attempts = runner._train(run, paths, [sys.executable, "-c", "pass"], timing)
    assert [attempt["returncode"] for attempt in attempts] == [3, 0] and all(a["wall_s"] > 0 for a in attempts)
    ready, stopped_marker = tmp_path / "ready", tmp_path / "stopped"
    trainer = (
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(stopped_marker)!r}).touch(), sys.exit(143)))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )

    def interrupt_when_ready() -> None:
        while not ready.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_ready, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        runner._train(run, paths, [sys.executable, "-c", trainer], other)
    assert stopped.value.code == 128 + signal.SIGINT, "the runner stops after the trainer"
    assert stopped_marker.exists(), "SIGINT must reach the trainer as SIGTERM"
    assert [attempt["returncode"] for attempt in json.loads(other.read_text())] == [143]
    assert len(json.loads(timing.read_text())) == 2, "attempts of another run id must stay apart"
    assert signal.getsignal(signal.SIGINT) is handler_before, "the runner restores the SIGINT handler"


# ------------------------------------------------------------------------------------------ prepared data
def test_prepared_data_are_reused_checked_and_never_overwritten(tmp_path):
    source = tmp_path / "ethanol.npz"
    source.write_bytes(ETHANOL.read_bytes())
    content = grid_content(tmp_path)
    content["datasets"]["ethanol"]["src"] = str(source)
    paths = paths_in(tmp_path)
    run = parse_grid(content).runs[0]
    split = paths.data(run)
    prepare_dataset(read_rmd17(source), split, 16, 8, 16, 0, source, "rmd17")  # as an earlier runner left it
    written = (split / "metadata.json").stat().st_mtime_ns
    assert runner.prepare_split(run, paths) == split and (split / "metadata.json").stat().st_mtime_ns == written

    def asking(**dataset) -> runner.RunSpec:
        changed = grid_content(tmp_path)
        changed["datasets"]["ethanol"] |= {"src": str(source)} | dataset
        return parse_grid(changed).runs[0]

    for other, difference in [
        (asking(test_size=12), "split_sizes.test"),
        (asking(val_size=10), "split_sizes.val"),
        (asking(prepare_args=["--skip-unit-check"]), "prepare_args"),
        (asking(src=str(ETHANOL)), "source"),
    ]:
        with pytest.raises(runner.PreparedDataMismatch, match=difference) as mismatch:
            runner.prepare_split(other, paths)
        assert str(split) in str(mismatch.value) and "--data-dir" in str(mismatch.value)
    data = dict(np.load(source))
    np.savez(source, **data | {"energies": data["energies"] + 1.0})
    with pytest.raises(runner.PreparedDataMismatch, match="source_sha256"):
        runner.prepare_split(run, paths)
    assert (split / "metadata.json").stat().st_mtime_ns == written, "prepared data must never be overwritten"


def test_test_size_must_be_the_requested_one_or_the_sources_default(tmp_path):
    content = grid_content(tmp_path)
    content["datasets"]["ethanol"] |= {"test_size": 16}
    run = next(run for run in parse_grid(content).runs if run.train_size == 32)
    smaller = tmp_path / "smaller"
    prepare_dataset(read_rmd17(ETHANOL), smaller, 32, 8, 12, run.split_seed, ETHANOL, "rmd17")
    assert runner.split_mismatches(smaller, run) == ["split_sizes.test is 12, the run asks for 16"]
    content["datasets"]["ethanol"].pop("test_size")
    run = next(run for run in parse_grid(content).runs if run.train_size == 32)
    default = tmp_path / "default"
    prepare_dataset(read_rmd17(ETHANOL), default, 32, 8, None, run.split_seed, ETHANOL, "rmd17")
    assert runner.split_mismatches(default, run) == []  # 60 frames: the default test set is the 20 left


def test_a_partly_written_split_is_rebuilt_with_a_record_of_its_request(tmp_path):
    paths = paths_in(tmp_path)
    run = parse_grid(grid_content(tmp_path)).runs[0]
    split = paths.data(run)
    (split / "train").mkdir(parents=True)
    (split / "train" / "leftover").write_text("")
    assert runner.prepare_split(run, paths) == split
    assert json.loads((split / "metadata.json").read_text())["split_sizes"] == {"train": 16, "val": 8, "test": 16}
    assert json.loads((split / runner.SPLIT_REQUEST_FILE).read_text())["test_size"] == 16
    assert not (split / "train" / "leftover").exists()
    assert runner.split_mismatches(split, run) == []


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
                    "config_hash": "current",
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
                        "energy_unit": "kcal/mol",  # as piwsl.evaluate writes it
                        "in_training_set": 0,
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
    grid = {"studies": [study], "config_hashes": dict.fromkeys(names, "current")}
    runner.write_json_atomic(tmp_path / "grid.json", grid)
    return tmp_path


def test_mean_and_sample_std():
    stat_ = agg.mean_std([1.0, 2.0, 3.0])
    assert stat_.mean == 2.0 and stat_.std == pytest.approx(1.0) and stat_.count == 3
    assert agg.mean_std([4.0]).std == 0.0
    assert stat_.format(2) == "2.00 ± 1.00" and stat_.format(1, expected=4) == "2.0 ± 1.0 (n=3)"
    assert stat_.text("+.1f") == "+2.0 ± 1.0"
    assert stat_.marked("x", expected=3) == "x" and stat_.marked("x", expected=None) == "x"
    assert agg.mean_std([4.0, 6.0]).marked("5 / 10", expected=3) == "5 / 10 (n=2)"
    assert agg.mean_std([4.0]).format(2, expected=3) == "4.00 (n=1)", "one value has no spread to show"


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
    assert gains[("d", "m", "piwsl", 100, None)]["energy"].mean == pytest.approx(20.0)
    assert gains[("d", "m", "piwsl", 100, None)]["energy"].std == pytest.approx(0.0, abs=1e-9)
    text = agg.aggregate(results_dir, tmp_path / "out")
    assert "+20.0 ± 0.0" in text
    figure = tmp_path / "out/figures/gain_s__d.png"
    assert figure.stat().st_size > 10_000
    rows = (tmp_path / "out/tables/summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("dataset,backbone,method,train_size,tag,seeds")


def test_runtime_table_gives_the_step_range_and_how_each_seed_stopped(tmp_path):
    results_dir = synthetic_results(tmp_path)
    for path in (results_dir / "runs").glob("d-m-piwsl-n1000-*.json"):
        result = json.loads(path.read_text())
        stopped_by, steps = ("max_steps", 300) if result["seed"] == 2 else ("early_stopping", 120 + result["seed"])
        runner.write_json_atomic(path, result | {"steps": steps, "convergence": {"stopped_by": stopped_by}})
    results = agg.load_results(results_dir)
    (study,) = agg.load_studies(results_dir, results)
    rows = {row[2]: row[3:] for row in agg.runtime_table(study, results).rows}
    assert rows["PIWSL"] == ["10 ± 0 / 100", "10 ± 0 / 120–300 (e,e,c)"]
    assert rows["BASELINE"] == ["10 ± 0 / 100", "10 ± 0 / 100"]  # results without a convergence record


def test_aggregation_uses_only_the_grids_runs_with_their_current_config_hash(tmp_path, capsys):
    results_dir = synthetic_results(tmp_path)
    stale = json.loads((results_dir / "runs/d-m-piwsl-n100-s2.json").read_text())
    runner.write_json_atomic(results_dir / "runs/d-m-piwsl-n100-s2.json", stale | {"config_hash": "old"})
    foreign = stale | {"run": "d-m-piwsl-n100-s9", "seed": 9, "test": stale["test"] | {"energy_rmse": 1e6}}
    runner.write_json_atomic(results_dir / "runs/d-m-piwsl-n100-s9.json", foreign)
    text = agg.aggregate(results_dir, tmp_path / "out")
    warning = capsys.readouterr().err
    assert "d-m-piwsl-n100-s2" in warning and "old" in warning and "n100-s9" not in warning
    assert "16.00 ± 8.00" not in text and "12.00 ± 5.66 (n=2)" in text, "the stale seed must not count"
    assert "+20.0 ± 0.0 (n=2)" in text
    rows = list(csv.DictReader((tmp_path / "out/tables/summary.csv").read_text().splitlines()))
    piwsl_100 = next(row for row in rows if row["method"] == "piwsl" and row["train_size"] == "100")
    assert piwsl_100["seeds"] == "2" and float(piwsl_100["energy_rmse_mean"]) == pytest.approx(12.0)


def test_tagged_studies_are_not_pooled(tmp_path):
    results_dir = synthetic_results(tmp_path)
    results = agg.load_results(results_dir)
    tagged = [
        r | {"run": r["run"] + "-long", "tag": "long", "test": r["test"] | {"energy_rmse": 99.0}} for r in results
    ]
    summary = agg.summarize(results + tagged)
    assert summary[("d", "m", "baseline", 100, None)]["energy_rmse"].mean == pytest.approx(20.0)
    assert summary[("d", "m", "baseline", 100, "long")]["energy_rmse"].mean == pytest.approx(99.0)
    (study,) = agg.load_studies(results_dir, results)
    study = study | {"name": "long", "tag": "long", "runs": [r["run"] for r in tagged]}
    assert agg.benchmark_table(study, "d", results + tagged).rows[0][2] == "99.00 ± 0.00"


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


# ------------------------------------------------------------------------------------------ MD statistics
def linear_trajectory(slope_per_ps: float) -> Trajectory:
    times = np.arange(0.0, 1001.0, 100.0)
    return Trajectory(times, slope_per_ps * times / 1000.0, np.zeros_like(times), False, "", None)


def test_md_statistics_use_the_sample_std_and_count_replicas_without_drift():
    empty = np.array([])
    failed_at_start = Trajectory(empty, empty, empty, True, "non-finite energy or forces", 0.0)
    trajectories = [failed_at_start, linear_trajectory(2.0), linear_trajectory(-4.0)]
    row = stability_row(trajectories, steps=2000, timestep=0.5, natoms=2, ensemble="nve")
    assert row["failed"] == "1/3" and row["time to failure (fs)"] == "0 (n=1)"
    assert row["simulated (fs)"] == f"667 ± {np.std([0.0, 1000.0, 1000.0], ddof=1):.0f}"
    assert row["|drift| (kcal/mol/ps)"] == "3.00 ± 1.41 (n=2)"
    assert row["|drift| per atom (kcal/mol/ps)"] == "1.5000 ± 0.7071 (n=2)"
    assert row["no drift (too short)"] == "1" and row["first failure"] == "non-finite energy or forces"


class NaNCalculator(Calculator):
    """An ASE calculator whose predictions are never finite: every MD replica fails at step 0."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": float("nan"), "forces": np.full((len(self.atoms), 3), np.nan)}


def test_md_stability_reports_replicas_that_fail_at_the_first_step(tmp_path, monkeypatch):
    script = load_script("scripts/diagnostics/md_stability.py")
    (tmp_path / "model.pt").write_bytes(b"")
    monkeypatch.setattr(script, "load_calculator", lambda checkpoint, energy_unit=None: NaNCalculator())
    arguments = ["--model", f"M={tmp_path}/model.pt", "--structure", str(ETHANOL), "--steps", "5"]
    assert script.main([*arguments, "--replicas", "2", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out/md_stability.md").read_text()
    assert "| M | 2/2 | 0 ± 0 |" in table and (tmp_path / "out/md_stability.png").is_file()


# ------------------------------------------------------------------------------------------ diagnostics
@pytest.mark.parametrize("path", ["scripts/diagnostics/bond_scan.py", "scripts/diagnostics/md_stability.py"])
def test_one_model_diagnostics_refuse_a_pattern_that_matches_several_checkpoints(path, tmp_path, capsys):
    for seed in (0, 1):
        (tmp_path / f"model-s{seed}.pt").write_bytes(b"")
    pattern = f"{tmp_path}/model-s*.pt"
    assert load_script(path).main(["--model", f"M={pattern}", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert pattern in error and "model-s0.pt" in error and "model-s1.pt" in error
    assert not (tmp_path / "out").exists()


def test_diagnostics_report_bad_input_in_one_line_and_let_other_errors_through(tmp_path, capsys):
    parser = load_script("scripts/diagnostics/force_rotation.py").get_parser
    arguments = ["--model", f"M={tmp_path}/missing-*.pt", "--data", str(ETHANOL)]
    assert load_script("scripts/diagnostics/force_rotation.py").main(arguments) == 2
    assert "nothing matches" in capsys.readouterr().err

    def broken(args):
        raise ValueError("a bug, not an input error")

    with pytest.raises(ValueError, match="a bug"):
        diagnostic_main(parser, broken, arguments)
    assert issubclass(DiagnosticInputError, ValueError)


# ------------------------------------------------------------------------------------------ hyper-parameter search
def test_hpo_refuses_runs_of_other_methods_and_resumed_studies_with_other_objectives(tmp_path):
    optuna = pytest.importorskip("optuna")
    from piwsl.experiments.hpo import HPOError, check_objectives, check_tunable, trial_run

    paths = paths_in(tmp_path)
    baseline, pitc_only = parse_grid(grid_content(tmp_path)).runs[:2]
    with pytest.raises(HPOError, match="baseline"):
        check_tunable(baseline, paths)
    check_tunable(pitc_only, paths)
    assert trial_run(pitc_only, 3, {"c_pitc": 1.0}).overrides["piwsl"] == {"c_pisc": 0, "c_pitc": 1.0}
    study = optuna.create_study(directions=["minimize"])
    check_objectives(study, ["forces_mae"], "memory")
    check_objectives(study, ["forces_mae"], "memory")
    with pytest.raises(HPOError, match="forces_mae, not energy_rmse"):
        check_objectives(study, ["energy_rmse"], "memory")


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
    with pytest.raises(ValueError, match="energy_unit 'eV' contradicts"):
        PIWSLCalculator(checkpoint, energy_unit="eV")  # the checkpoint records kcal/mol
    with pytest.raises(ValueError, match="energy_unit"):
        PIWSLCalculator(checkpoint, energy_unit="rydberg")
    # A checkpoint written before piwsl recorded units: the diagnostics need --energy-unit, in one line.
    from trainer_helpers import without_training_record

    from piwsl.experiments.diagnostics import load_calculator

    older = without_training_record(checkpoint, tmp_path / "older.pt")
    with pytest.raises(DiagnosticInputError, match="does not record the unit.*--energy-unit"):
        load_calculator(older)
    older_energies, _ = load_calculator(older, "kcal/mol").predict(structures[:2])
    np.testing.assert_allclose(older_energies, energies[:2], rtol=1e-6)
    atoms.calc = calculator
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


def test_hpo_trials_table_orders_by_exact_objective_values():
    optuna = pytest.importorskip("optuna")
    from piwsl.experiments.hpo import trial_rows

    distributions = {
        "c_pitc": optuna.distributions.FloatDistribution(0.01, 10.0, log=True),
        "c_pisc": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
        "max_displacement": optuna.distributions.FloatDistribution(0.003, 0.1),
    }
    study = optuna.create_study()
    for value in (2.25003, 2.24970, 2.31):  # the first two print alike at 3 decimals
        params = {"c_pitc": 1.0, "c_pisc": 0.01, "max_displacement": 0.02}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    rows = trial_rows(study, ["forces_mae"])
    assert [row["trial"] for row in rows] == [1, 0, 2]
    assert rows[0]["pareto"] == "yes" and rows[1]["pareto"] == ""


# ------------------------------------------------------------------------------------------ pretrain -> fine-tune
def finetune_grid(tmp_path: Path, template: str = "ethanol-{backbone}-baseline-n16-s{seed}") -> dict:
    """The tiny grid plus a fine-tuning method whose runs start from the baseline runs of N_train 16."""
    content = grid_content(tmp_path)
    content["methods"]["ft"] = {"config": "piwsl", "finetune_from": template, "finetune": {"weights": "raw"}}
    content["studies"] = {
        "finetune": {"datasets": ["ethanol"], "backbones": ["painn"], "methods": ["ft"], "train_sizes": [32]},
        "pretrain": {"datasets": ["ethanol"], "backbones": ["painn"], "methods": ["baseline"], "train_sizes": [16]},
    }
    return content


def test_finetune_from_names_a_run_of_the_grid_and_pretraining_goes_first(tmp_path):
    from piwsl.experiments.grid import pretraining_first

    grid = parse_grid(finetune_grid(tmp_path))
    runs = {run.name: run for run in grid.runs}
    fine = runs["ethanol-painn-ft-n32-s1"]
    assert (
        fine.pretrained == runs["ethanol-painn-baseline-n16-s1"]
        and fine.describe()["finetune_from"] == fine.pretrained.name
    )
    assert runs["ethanol-painn-baseline-n16-s0"].pretrained is None
    assert [run.name for run in grid.runs][:2] == ["ethanol-painn-ft-n32-s0", "ethanol-painn-ft-n32-s1"]
    ordered = [run.name for run in pretraining_first(list(grid.runs))]
    seed_0 = ["ethanol-painn-baseline-n16-s0", "ethanol-painn-ft-n32-s0"]
    assert ordered == seed_0 + [name.replace("-s0", "-s1") for name in seed_0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"finetune_from": "ethanol-{backbone}-baseline-n16-s{sed}"}, "unknown placeholder {sed}; allowed: {dataset}"),
        (
            {"finetune_from": "ethanol-{backbone}-baseline-n17-s{seed}"},
            "gives 'ethanol-painn-baseline-n17-s0', which is "
            "not a run of this grid; closest: ethanol-painn-baseline-n16-s0",
        ),
        ({"finetune_from": "ethanol-{backbone}-ft-n32-s{seed}"}, "finetune_from makes a cycle"),
        ({"finetune": {"checkpoint": "x.pt"}}, "finetune.checkpoint: the runner sets it from finetune_from"),
        ({"finetune_from": None, "finetune": {"weights": "raw"}}, "finetune is set without finetune_from"),
    ],
)
def test_finetune_from_errors_name_the_method_and_run(tmp_path, change, message):
    content = finetune_grid(tmp_path)
    content["methods"]["ft"] = {k: v for k, v in (content["methods"]["ft"] | change).items() if v is not None}
    with pytest.raises(GridError, match=re.escape(message)):
        parse_grid(content)


def test_a_fine_tuning_run_waits_for_its_pretraining_and_hashes_the_checkpoint(tmp_path, capsys):
    paths = paths_in(tmp_path)
    runs = {run.name: run for run in parse_grid(finetune_grid(tmp_path)).runs}
    fine, source = runs["ethanol-painn-ft-n32-s0"], runs["ethanol-painn-baseline-n16-s0"]
    assert runner.run_status(fine, paths) == "waiting"
    with pytest.raises(
        runner.PretrainingNotFinished, match="fine-tunes from ethanol-painn-baseline-n16-s0, which is not"
    ):
        runner.write_config(fine, paths)
    failures = runner.run_locally([fine], paths, runner.Options(progress=False))
    assert len(failures) == 1 and "which is not finished" in failures[0] and not paths.failure_file(fine).exists()
    _, _, source_hash = runner.write_config(source, paths)
    best = paths.checkpoint_dir(runner.run_id(source, source_hash)) / "best_checkpoint.pt"
    best.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": {"run": "first"}}, best)
    source_result = {"config_hash": source_hash, runner.DIGEST_KEY: runner.checkpoint_digest(best)}
    runner.write_json_atomic(paths.result_file(source), source_result)
    assert runner.run_status(fine, paths) == "todo"
    _, text, first = runner.write_config(fine, paths)
    assert yaml.safe_load(text)["finetune"] == {"weights": "raw", "checkpoint": str(best)}
    assert runner.check_pretrained_file(fine, paths) == best
    # the hash follows the digest the pretraining results record, not the file: a fresh clone has no checkpoints
    best.unlink()
    assert runner.write_config(fine, paths)[2] == first
    assert runner.run_status(fine, paths).startswith("todo (after ethanol-painn-baseline-n16-s0, whose checkpoint")
    with pytest.raises(runner.PretrainedCheckpointMissing, match="is not on this machine"):
        runner.check_pretrained_file(fine, paths)
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": {"run": "again"}}, best)  # same weights, other file
    assert runner.check_pretrained_file(fine, paths) == best
    torch.save({"state_dict": {"w": torch.zeros(2)}, "config": {}}, best)
    with pytest.raises(runner.PretrainedCheckpointMissing, match="holds other weights than the results"):
        runner.check_pretrained_file(fine, paths)
    source_result[runner.DIGEST_KEY] = runner.checkpoint_digest(best)  # the pretraining run trained again
    runner.write_json_atomic(paths.result_file(source), source_result)
    assert runner.write_config(fine, paths)[2] != first, "a retrained pretraining must make its fine-tunes stale"
    grid_file = tmp_path / "grid.yml"
    grid_file.write_text(yaml.safe_dump(finetune_grid(tmp_path)))
    arguments = ["--grid", str(grid_file), "--results-dir", str(paths.results_dir), "--work-dir", str(paths.work_dir)]
    assert load_script("scripts/run_experiments.py").main([*arguments, "--list"]) == 0
    assert "waiting (fine-tunes from ethanol-painn-baseline-n16-s1, not finished)" in capsys.readouterr().out


def test_end_to_end_pretraining_then_fine_tuning_through_the_runner(tmp_path):
    grid_file = tmp_path / "grid.yml"
    content = finetune_grid(tmp_path)
    content["defaults"] |= {"seeds": [0], "max_steps": 4, "overrides": {"optim": {"eval_every": 4}}}
    content["studies"]["finetune"]["train_sizes"] = [16]  # the pretraining run's split: prepared once
    grid_file.write_text(yaml.safe_dump(content))
    arguments = ["--grid", str(grid_file), "--results-dir", str(tmp_path / "results"), "--work-dir"]
    arguments += [str(tmp_path / "work"), "--data-dir", str(tmp_path / "data"), "--no-progress", "--device", "cpu"]
    assert load_script("scripts/run_experiments.py").main(arguments) == 0
    source = json.loads((tmp_path / "results/runs/ethanol-painn-baseline-n16-s0.json").read_text())
    fine = json.loads((tmp_path / "results/runs/ethanol-painn-ft-n16-s0.json").read_text())
    assert fine["steps"] == 4 and fine["finetune_from"] == source["run"] and math.isfinite(fine["test"]["energy_rmse"])
    assert fine["pretrained"]["checkpoint"] == source["best_checkpoint"]
    assert fine["pretrained"][runner.DIGEST_KEY] == source[runner.DIGEST_KEY]
    checkpoint = torch.load(ROOT / fine["best_checkpoint"], weights_only=False)  # absolute outside the repository
    assert checkpoint["config"]["optim"]["finetune"]["checkpoint"] == fine["pretrained"]["checkpoint"]
    # A fresh clone: results committed, no checkpoints. The finished fine-tuning run stays done; one still
    # to train makes the runner train its pretraining run again, which on the CPU gives the same weights.
    shutil.rmtree(tmp_path / "work")
    fine_file = tmp_path / "results/runs/ethanol-painn-ft-n16-s0.json"
    assert load_script("scripts/run_experiments.py").main(arguments) == 0
    assert json.loads(fine_file.read_text()) == fine and not (tmp_path / "work/checkpoints").exists()
    fine_file.unlink()
    assert load_script("scripts/run_experiments.py").main(arguments) == 0
    again = json.loads((tmp_path / "results/runs/ethanol-painn-baseline-n16-s0.json").read_text())
    assert again[runner.DIGEST_KEY] == source[runner.DIGEST_KEY] and (ROOT / again["best_checkpoint"]).is_file()
    refined = json.loads(fine_file.read_text())
    assert refined["config_hash"] == fine["config_hash"] and refined["test"] == fine["test"]


def test_a_split_with_a_test_file_is_checked_against_that_files_checksum(tmp_path):
    data = dict(np.load(ETHANOL))
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, **{k: v[:40] if k in ("coords", "energies") else v for k, v in data.items() if k != "forces"})
    np.savez(test, **{k: v[40:] if k in ("coords", "energies", "forces") else v for k, v in data.items()})
    content = grid_content(tmp_path)
    content["datasets"]["ethanol"] |= {
        "src": str(train),
        "test_size": 20,
        "prepare_args": ["--force-key", "none", "--test-src", str(test)],
    }
    paths = paths_in(tmp_path)
    run = parse_grid(content).runs[0]
    split = paths.data(run)  # prepared in this process as the runner's subprocess would (faster)
    prepare = load_script("scripts/prepare_data.py")
    prepare.run(prepare.get_parser().parse_args([str(part) for part in runner.prepare_command(run, split)[2:]]))
    runner.write_json_atomic(split / runner.SPLIT_REQUEST_FILE, runner.split_request(run))
    metadata = json.loads((split / "metadata.json").read_text())
    assert metadata["split_sizes"] == {"train": 16, "val": 8, "test": 20} and metadata["test_has_forces"]
    assert runner.prepare_split(run, paths) == split
    data["energies"] = data["energies"] + 1.0  # the test file relabelled
    np.savez(test, **{k: v[40:] if k in ("coords", "energies", "forces") else v for k, v in data.items()})
    with pytest.raises(runner.PreparedDataMismatch, match="test_source_sha256"):
        runner.prepare_split(run, paths)
