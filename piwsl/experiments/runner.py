"""Prepare, train and evaluate the runs of a grid, resumably, here or on SLURM.

Per run: the (dataset, N_train, seed) split is prepared once with ``scripts/prepare_data.py``
(the test set is the same for every N_train of a seed); the run's config is written as a small
YAML that ``includes:`` the repository config and merges the overrides; ``main.py`` trains it in
a subprocess (a crash stays in that run) with a checkpoint directory named after the run and its
config hash, so rerunning resumes a killed run from its last checkpoint; the best-validation
checkpoint is evaluated with ``piwsl.evaluate`` and ``RESULTS/runs/<run>.json`` written atomically.
A run whose results file holds the current config hash is done and skipped.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from fairchem.core.common.utils import load_config
from tqdm import tqdm

from piwsl.experiments.grid import ROOT, Grid, RunSpec, merge, resolve

TRAIN_SCRIPT = ROOT / "main.py"
PREPARE_SCRIPT = ROOT / "scripts/prepare_data.py"
STEP_PATTERN = re.compile(r"step: ([0-9.e+]+)")
#: How often (s) a running training's log is read for the progress bar.
POLL_SECONDS = 2.0


class RunFailed(RuntimeError):
    """A run whose preparation, training or evaluation failed; the message points at its log."""


@dataclass(frozen=True)
class Paths:
    """Where a grid's outputs go: results (committed), work files and prepared data (not)."""

    results_dir: Path
    work_dir: Path
    data_dir: Path

    @property
    def runs_dir(self) -> Path:
        return self.results_dir / "runs"

    def result_file(self, run: RunSpec) -> Path:
        return self.runs_dir / f"{run.name}.json"

    def failure_file(self, run: RunSpec) -> Path:
        return self.runs_dir / f"{run.name}.failed.json"

    def config_file(self, run: RunSpec) -> Path:
        return self.work_dir / "configs" / f"{run.name}.yml"

    def log_file(self, run: RunSpec) -> Path:
        return self.work_dir / "logs" / f"{run.name}.log"

    def timing_file(self, run: RunSpec) -> Path:
        return self.work_dir / "timing" / f"{run.name}.json"

    def data(self, run: RunSpec) -> Path:
        return self.data_dir / run.data_name

    def checkpoint_dir(self, run_id: str) -> Path:
        return self.work_dir / "checkpoints" / run_id


@dataclass(frozen=True)
class Options:
    """How runs execute: ``device`` auto|cpu|cuda, the split evaluated, batch size, progress bars."""

    device: str = "auto"
    eval_split: str = "test"
    eval_batch_size: int = 32
    progress: bool = True

    def use_cpu(self) -> bool:
        if self.device == "auto":
            import torch

            return not torch.cuda.is_available()
        return self.device == "cpu"


def write_json_atomic(path: Path, content: Any) -> None:
    """Write JSON to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream, indent=1, default=str)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def relative(path: Path) -> str:
    """``path`` relative to the repository root when inside it (portable configs and results)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def portable(command: list[str]) -> list[str]:
    """A command as it would be typed in the repository root: ``python``, paths relative to the root."""
    return ["python" if part == sys.executable else relative(Path(part)) if part.startswith("/") else part
            for part in command]  # fmt: skip


# ---------------------------------------------------------------------------------------------- data
def split_is_current(directory: Path, run: RunSpec) -> bool:
    """Whether ``directory`` holds the split ``run`` asks for (source, seed, sizes, force labels)."""
    metadata_file = directory / "metadata.json"
    if not metadata_file.is_file():
        return False
    metadata = json.loads(metadata_file.read_text())
    sizes = metadata.get("split_sizes", {})
    dataset = run.dataset
    return (
        Path(metadata.get("source", "")) == resolve(dataset.src).resolve()
        and metadata.get("seed") == run.split_seed
        and sizes.get("train") == run.train_size
        and (dataset.val_size is None or sizes.get("val") == dataset.val_size)
        and (dataset.test_size is None or sizes.get("test", 0) <= dataset.test_size)
        and metadata.get("train_has_forces") == (metadata.get("has_forces") and not run.method.energy_only)
    )


def prepare_command(run: RunSpec, out: Path) -> list[str]:
    dataset = run.dataset
    command = [
        sys.executable, str(PREPARE_SCRIPT), dataset.format, "--src", str(resolve(dataset.src)), "--out", str(out),
        "--train-size", str(run.train_size), "--seed", str(run.split_seed),
    ]  # fmt: skip
    if dataset.val_size is not None:
        command += ["--val-size", str(dataset.val_size)]
    if dataset.test_size is not None:
        command += ["--test-size", str(dataset.test_size)]
    if run.method.energy_only:
        command.append("--energy-only")
    return command + list(dataset.prepare_args)


def prepare_split(run: RunSpec, paths: Paths) -> Path:
    """Prepare the run's split unless an identical one exists; return its directory."""
    out = paths.data(run)
    if split_is_current(out, run):
        return out
    result = subprocess.run(prepare_command(run, out), capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RunFailed(f"preparing {out} failed: {result.stderr.strip().splitlines()[-1:]}")
    return out


# ---------------------------------------------------------------------------------------------- config
def model_overrides(run: RunSpec) -> dict:
    """The backbone's model file's ``model`` and ``optim`` settings, less those the base config sets itself.

    The base config includes the full-size model file; a smaller model file replaces its settings,
    but settings the base config's own text fixes (e.g. ``direct_forces: False`` of the energy-only
    gradient configs) still hold, as they would if the base config included the smaller file.
    """
    if run.backbone.model is None:
        return {}
    model_file, _, _ = load_config(resolve(run.backbone.model))
    own = yaml.safe_load(run.base_config.read_text()) or {}
    overrides = {}
    for section in ("model", "optim"):
        fixed = own.get(section) or {}
        values = {key: value for key, value in (model_file.get(section) or {}).items() if key not in fixed}
        if values:
            overrides[section] = values
    return overrides


def run_overrides(run: RunSpec, paths: Paths) -> dict:
    """Everything merged onto the base config: model file, grid overrides, data paths, steps."""
    data = paths.data(run)
    fixed = {
        "dataset": {"train": {"src": relative(data / "train")}, "val": {"src": relative(data / "val")}, "test": None},
        "optim": {"max_steps": run.max_steps},
    }
    return merge(merge(model_overrides(run), run.overrides), fixed)


def render_config(run: RunSpec, paths: Paths) -> str:
    """The YAML of the run's config: the base config included, the overrides on top."""
    if not run.base_config.is_file():
        raise RunFailed(f"{run.name}: base config {relative(run.base_config)} does not exist")
    header = (
        f"# {run.name}: generated by scripts/run_experiments.py; do not edit.\n"
        f"# Base config {relative(run.base_config)}; the test split is evaluated after training, not during it.\n"
    )
    content = {"includes": [str(run.base_config)]} | run_overrides(run, paths)
    return header + yaml.safe_dump(content, sort_keys=False)


def write_config(run: RunSpec, paths: Paths) -> tuple[Path, str, str]:
    """Write the run's config; return its path, text and hash (of the resolved config and the seed)."""
    text = render_config(run, paths)
    path = paths.config_file(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    resolved, _, _ = load_config(path)
    digest = hashlib.sha256(json.dumps({"config": resolved, "seed": run.seed}, sort_keys=True, default=str).encode())
    return path, text, digest.hexdigest()[:12]


def run_id(run: RunSpec, config_hash: str) -> str:
    """The checkpoint directory name: a changed config trains anew instead of resuming."""
    return f"{run.name}-{config_hash}"


# ---------------------------------------------------------------------------------------------- status
def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_status(run: RunSpec, paths: Paths) -> str:
    """``done`` (results with the current config hash), ``partial`` (a checkpoint to resume) or ``todo``."""
    _, _, config_hash = write_config(run, paths)
    result = read_result(paths.result_file(run))
    if result is not None and result.get("config_hash") == config_hash:
        return "done"
    if (paths.checkpoint_dir(run_id(run, config_hash)) / "checkpoint.pt").is_file():
        return "partial"
    return "todo"


# ---------------------------------------------------------------------------------------------- execution
def train_command(run: RunSpec, paths: Paths, config_file: Path, identifier: str, cpu: bool) -> list[str]:
    command = [
        sys.executable, str(TRAIN_SCRIPT), "--mode", "train", "--config", str(config_file),
        "--run-dir", str(paths.work_dir), "--identifier", run.name, "--timestamp-id", identifier,
        "--seed", str(run.seed), "--print-every", "25",
    ]  # fmt: skip
    return command + (["--cpu"] if cpu else [])


def _train(
    run: RunSpec,
    paths: Paths,
    command: list[str],
    progress: bool,
    on_start: Callable[[subprocess.Popen], None] | None,
) -> float:
    """Run the training subprocess with a progress bar read from its log; return its wall time (s)."""
    log = paths.log_file(run)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(command)}\n")
        handle.flush()
        started = time.perf_counter()
        environment = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=environment)
        if on_start is not None:
            on_start(process)
        bar = tqdm(total=run.max_steps, desc=run.name, unit="step", leave=False, disable=not progress)
        offset = log.stat().st_size
        while process.poll() is None:
            time.sleep(POLL_SECONDS)
            with open(log) as reader:
                reader.seek(offset)
                steps = STEP_PATTERN.findall(reader.read())
            if steps:
                bar.n = min(int(float(steps[-1])), run.max_steps)
                bar.refresh()
        bar.close()
        wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RunFailed(f"{run.name}: training exited with {process.returncode} (log {log}):\n{tail}")
    return wall


def _record_attempt(path: Path, wall: float) -> list[dict]:
    attempts = read_result(path) or []
    attempts.append({"finished_at": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": wall})
    write_json_atomic(path, attempts)
    return attempts


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def evaluate_run(checkpoint: Path, data: Path, options: Options) -> dict:
    """Errors of ``checkpoint`` on ``data`` (kcal/mol, kcal/mol/Å), the trainer freed afterwards."""
    from piwsl.evaluate import evaluate, load_trainer

    trainer = load_trainer(checkpoint, cpu=options.use_cpu())
    try:
        return asdict(evaluate(trainer, data, options.eval_batch_size, options.progress))
    finally:
        del trainer
        gc.collect()


def execute_run(
    run: RunSpec,
    paths: Paths,
    options: Options,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> dict:
    """Prepare, train (or resume), evaluate and record one run; return its results."""
    import torch

    from piwsl.config import PIWSLConfig

    try:
        data = prepare_split(run, paths)
        config_file, config_text, config_hash = write_config(run, paths)
        identifier = run_id(run, config_hash)
        command = train_command(run, paths, config_file, identifier, options.use_cpu())
        wall = _train(run, paths, command, options.progress, on_start)
        attempts = _record_attempt(paths.timing_file(run), wall)
        checkpoint_dir = paths.checkpoint_dir(identifier)
        best = checkpoint_dir / "best_checkpoint.pt"
        if not best.is_file():
            raise RunFailed(f"{run.name}: no best_checkpoint.pt in {checkpoint_dir} (did validation run?)")
        final = torch.load(checkpoint_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
        best_state = torch.load(best, map_location="cpu", weights_only=False)
        started = time.perf_counter()
        errors = evaluate_run(best, data / options.eval_split, options)
        eval_wall = time.perf_counter() - started
    except RunFailed as failure:
        write_json_atomic(paths.failure_file(run), run.describe() | {"error": str(failure)})
        raise
    metadata = json.loads((data / "metadata.json").read_text())
    result = run.describe() | {
        "config_hash": config_hash,
        "run_id": identifier,
        "base_config": relative(run.base_config),
        "config_yaml": config_text,
        "command": portable(command),
        "piwsl": asdict(PIWSLConfig.from_dict(final["config"]["optim"].get("piwsl"))),
        "steps": int(final["step"]),
        "train_wall_s": sum(attempt["wall_s"] for attempt in attempts),
        "attempts": len(attempts),
        "eval_wall_s": eval_wall,
        "data": relative(data),
        "split_sizes": metadata["split_sizes"],
        "best_checkpoint": relative(best),
        "val_metrics": {key: value["metric"] for key, value in (best_state.get("val_metrics") or {}).items()},
        options.eval_split: errors,
        "host": socket.gethostname(),
        "device": "cpu" if options.use_cpu() else torch.cuda.get_device_name(),
        "git_commit": _git_commit(),
        "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    write_json_atomic(paths.result_file(run), result)
    paths.failure_file(run).unlink(missing_ok=True)
    return result


def run_locally(runs: Iterable[RunSpec], paths: Paths, options: Options) -> list[str]:
    """Execute the runs one after another, skipping finished ones; return the failures' messages."""
    runs = list(runs)
    failures = []
    bar = tqdm(runs, desc="runs", unit="run", disable=not options.progress)
    for run in bar:
        bar.set_postfix_str(run.name)
        try:
            if run_status(run, paths) == "done":
                continue
            result = execute_run(run, paths, options)
        except RunFailed as failure:
            failures.append(str(failure))
            tqdm.write(f"FAILED {failure}")
            continue
        errors = result[options.eval_split]
        forces = "n/a" if errors["forces_rmse"] is None else f"{errors['forces_rmse']:.3f}"
        tqdm.write(
            f"{run.name}: E RMSE {errors['energy_rmse']:.3f} kcal/mol, F RMSE {forces} kcal/mol/Å, "
            f"{result['steps']} steps, {result['train_wall_s']:.0f} s"
        )
    return failures


# ---------------------------------------------------------------------------------------------- SLURM
@dataclass(frozen=True)
class SlurmOptions:
    """SLURM resources per run (one array task each); ``timeout_h`` in hours, ``mem_gb`` in GB."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    timeout_h: float = 24.0
    mem_gb: float = 32.0
    gpus: int = 1
    cpus: int = 8
    array_parallelism: int = 64
    max_requeues: int = 3
    log_dir: Path = Path("logs/slurm")


class SlurmRun:
    """The callable each array task runs; on pre-emption or timeout it stops training and requeues.

    SLURM warns a job before killing it; submitit then calls ``checkpoint``, which sends SIGTERM
    to the training subprocess (the trainer saves a step-boundary checkpoint and exits) and
    resubmits the same run, which resumes from that checkpoint.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def __call__(self, run: RunSpec, paths: Paths, options: Options) -> dict:
        return execute_run(run, paths, options, on_start=self._remember)

    def _remember(self, process: subprocess.Popen) -> None:
        self.process = process

    def checkpoint(self, run: RunSpec, paths: Paths, options: Options):
        from submitit.helpers import DelayedSubmission

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return DelayedSubmission(SlurmRun(), run, paths, options)


def submit_slurm(runs: list[RunSpec], paths: Paths, options: Options, slurm: SlurmOptions, name: str) -> list[str]:
    """Prepare every split here, then submit the unfinished runs as one SLURM array; return job ids."""
    from submitit import AutoExecutor

    pending = [run for run in runs if run_status(run, paths) != "done"]
    for run in tqdm(pending, desc="prepare splits", disable=not options.progress):
        prepare_split(run, paths)
    if not pending:
        return []
    executor = AutoExecutor(folder=slurm.log_dir / "%j", cluster="slurm", slurm_max_num_timeout=slurm.max_requeues)
    executor.update_parameters(
        name=name,
        timeout_min=int(slurm.timeout_h * 60),
        mem_gb=slurm.mem_gb,
        gpus_per_node=slurm.gpus,
        cpus_per_task=slurm.cpus,
        tasks_per_node=1,
        nodes=1,
        slurm_partition=slurm.partition,
        slurm_account=slurm.account,
        slurm_qos=slurm.qos,
        slurm_array_parallelism=slurm.array_parallelism,
    )
    quiet = Options(options.device, options.eval_split, options.eval_batch_size, progress=False)
    count = len(pending)
    jobs = executor.map_array(SlurmRun(), pending, [paths] * count, [quiet] * count)
    return [job.job_id for job in jobs]


def write_grid_description(grid: Grid, paths: Paths) -> None:
    """``RESULTS/grid.json``: the studies and their runs, which the aggregation lays tables out by."""
    write_json_atomic(paths.results_dir / "grid.json", grid.describe())
