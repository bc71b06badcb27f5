"""Prepare, train and evaluate the runs of a grid, resumably, here or on SLURM.

Per run: the (dataset, N_train, seed) split is prepared once with ``scripts/prepare_data.py``
(the test set is the same for every N_train of a seed); the run's config is written as a small
YAML that ``includes:`` the repository config and merges the overrides; ``main.py`` trains it in
a subprocess (a crash stays in that run) with a checkpoint directory named after the run and its
config hash, so rerunning resumes a killed run from its last checkpoint; the best-validation
checkpoint is evaluated with ``piwsl.evaluate`` and ``RESULTS/runs/<run>.json`` written atomically.
A run whose results file holds the current config hash is done and skipped; a run whose resolved
config and seed equal those of another finished run (e.g. a grid method that aliases another, such as
a tuned baseline that turned out to be the paper's setting) is not trained again: its results file is
that run's, with ``reused_from`` naming it. A fine-tuning run's config hash includes the weights
digest of its pretrained checkpoint as the pretraining run's results record it, so it is known
without the (uncommitted) checkpoint; a pretraining run whose checkpoint is missing where a
fine-tuning run still has to train is trained again first (``retrain_pretraining``).

Prepared splits are immutable: finished runs were trained and tested on them, so a split
directory that holds other data than a run asks for (another source, checksum, size or
preparation argument) is an error, never overwritten. While a run trains, a lock file in its
checkpoint directory keeps a second runner from training it at the same time, and SIGTERM or
SIGINT to a local runner stop the training subprocess at a step boundary with a checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import gc
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from fairchem.core.common.utils import load_config
from tqdm import tqdm

from piwsl.checkpointing import weights_digest
from piwsl.convergence import CONVERGENCE_KEY, WALL_SECONDS_KEY
from piwsl.data.formats import FORMATS
from piwsl.data.lmdb_writer import check_replaceable
from piwsl.data.prepare import DATASET_ENTRIES, EXTRA_SPLITS, file_checksum
from piwsl.data.splits import default_test_size, default_val_size
from piwsl.experiments.aggregate import training_seconds
from piwsl.experiments.grid import ROOT, Grid, RunSpec, merge, pretraining_first, resolve
from piwsl.jsonfiles import write_json_atomic

TRAIN_SCRIPT = ROOT / "main.py"
PREPARE_SCRIPT = ROOT / "scripts/prepare_data.py"
STEP_PATTERN = re.compile(r"step: ([0-9.e+]+)")
#: Key of a results file (and of its ``pretrained`` record) holding the best checkpoint's ``weights_digest``.
DIGEST_KEY = "best_checkpoint_weights_digest"
#: How often (s) a running training's log is read for the progress bar.
POLL_SECONDS = 2.0
#: How long (s) a training subprocess may take to save its checkpoint and exit after SIGTERM.
STOP_TIMEOUT_SECONDS = 300.0
#: In a prepared split directory: what the runner asked prepare_data.py for (beside its metadata.json).
SPLIT_REQUEST_FILE = "split_request.json"
#: In a run's checkpoint directory: locked while a runner trains the run.
LOCK_FILE = "runner.lock"


class RunFailed(RuntimeError):
    """A run whose preparation, training or evaluation failed; the message points at its log."""


class PreparedDataMismatch(RunFailed):
    """A prepared split directory that holds other data than the run asks for."""


class RunLocked(RunFailed):
    """Another runner holds the run's lock: it is training the run now."""


class WaitingForRun(RunFailed):
    """A run whose wall-clock budget comes from another run that has not finished yet."""


class PretrainingNotFinished(RunFailed):
    """A fine-tuning run whose pretraining run (``finetune_from``) has no results with its current config."""


class PretrainedCheckpointMissing(RunFailed):
    """A fine-tuning run to train whose finished pretraining run's best checkpoint is not on this machine
    (results committed elsewhere) or holds other weights than its results record."""


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

    def timing_file(self, run_id: str) -> Path:
        """Wall times of the training attempts of one run id (name and config hash)."""
        return self.work_dir / "timing" / f"{run_id}.json"

    def data(self, run: RunSpec) -> Path:
        return self.data_dir / run.data_name

    def checkpoint_dir(self, run_id: str) -> Path:
        return self.work_dir / "checkpoints" / run_id

    def tensorboard_dir(self, run_id: str) -> Path:
        """Where main.py's tensorboard logger writes the run's scalars (``--run-dir`` is the work dir)."""
        return self.work_dir / "logs" / "tensorboard" / run_id


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
def split_request(run: RunSpec) -> dict[str, Any]:
    """What ``run`` asks prepare_data.py for: source, seed, requested sizes, force labels, extra arguments."""
    dataset = run.dataset
    return {
        "format": dataset.format,
        "source": str(resolve(dataset.src).resolve()),
        "seed": run.split_seed,
        "train_size": run.train_size,
        "val_size": default_val_size(run.train_size) if dataset.val_size is None else dataset.val_size,
        "test_size": dataset.test_size_for(run.train_size),
        "energy_only": run.method.energy_only,
        "prepare_args": list(dataset.prepare_args),
    }


def recorded_split_request(run: RunSpec) -> dict[str, Any]:
    """``split_request`` as results and ``grid.json`` record it: the source relative to the repository."""
    request = split_request(run)
    return request | {"source": relative(Path(request["source"]))}


def is_current(result: dict | None, run: RunSpec, config_hash: str) -> bool:
    """Whether ``result`` is the run's under its current config: the config hash, and the split the run
    asks for where the result records one (a grid's edited split sizes or data leave the config alone)."""
    if result is None or result.get("config_hash") != config_hash:
        return False
    return "split_request" not in result or result["split_request"] == recorded_split_request(run)


def check_checkpoint_split(run: RunSpec, checkpoint_dir: Path) -> None:
    """Record in the run's checkpoint directory the split it trains on; refuse to resume a checkpoint of
    another one (split settings are not part of the config hash that names the directory)."""
    record = checkpoint_dir / SPLIT_REQUEST_FILE
    request = recorded_split_request(run)
    if not record.is_file():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, request)
    elif (recorded := json.loads(record.read_text())) != request:
        changed = ", ".join(key for key in request if recorded.get(key) != request[key])
        raise PreparedDataMismatch(
            f"{run.name}: {relative(checkpoint_dir)} holds a partly trained run of another data split ({changed} "
            "changed in the grid); remove that directory to train the run afresh"
        )


def source_checksum(path: Path) -> str | None:
    """SHA-256 of a source file or directory as metadata.json records it (None if missing), cached per version."""
    path = Path(path).resolve()
    return cached_per_version(file_checksum, path) if path.exists() else None


def cached_per_version(digest: Callable[[Path], str], path: Path) -> str:
    """``digest(path)`` of a file or directory, computed once per version of it (its files' sizes and
    modification times): a grid's status asks for the same digests once per run."""
    path = path.resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    version = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _cached_digest(digest, path, version)


@functools.lru_cache(maxsize=128)
def _cached_digest(digest: Callable[[Path], str], path: Path, version: tuple) -> str:
    return digest(path)


def split_mismatches(directory: Path, run: RunSpec) -> list[str]:
    """How the prepared split in ``directory`` differs from what ``run`` asks for (empty: it matches).

    Compared with its ``metadata.json``: format, source path and SHA-256, split seed, train and
    validation sizes, force labels of the training split, and the test size, which must equal the
    requested one, or the format's default for the source when none is requested
    (``splits.default_test_size``), and the SHA-256 of a ``--test-src`` file. The extra
    ``prepare_args`` are compared with the ``split_request.json`` the runner writes beside it; a
    split prepared before that record existed counts as prepared without extra arguments.
    """
    metadata = json.loads((directory / "metadata.json").read_text())
    request_file = directory / SPLIT_REQUEST_FILE
    recorded = json.loads(request_file.read_text()) if request_file.is_file() else {"prepare_args": []}
    request = split_request(run)
    sizes = metadata.get("split_sizes", {})
    test_size = request["test_size"]
    if test_size is None:
        test_size = default_test_size(
            metadata.get("num_records", 0),
            request["train_size"],
            request["val_size"],
            FORMATS[run.dataset.format].default_test_size,
        )
    checksum = source_checksum(Path(request["source"]))
    pairs = {
        "format": (metadata.get("format"), request["format"]),
        "source": (metadata.get("source"), request["source"]),
        "source_sha256": (metadata.get("source_sha256"), checksum or "unknown: the source does not exist"),
        "seed": (metadata.get("seed"), request["seed"]),
        "split_sizes.train": (sizes.get("train"), request["train_size"]),
        "split_sizes.val": (sizes.get("val"), request["val_size"]),
        "split_sizes.test": (sizes.get("test"), test_size),
        "train_has_forces (energy_only)": (
            metadata.get("train_has_forces"),
            bool(metadata.get("has_forces")) and not request["energy_only"],
        ),
        "prepare_args": (recorded.get("prepare_args"), request["prepare_args"]),
    }
    if metadata.get("test_source"):  # prepared with --test-src: that file must not have changed either
        current = source_checksum(Path(metadata["test_source"])) or "unknown: the file does not exist"
        pairs["test_source_sha256"] = (metadata.get("test_source_sha256"), current)
    return [
        f"{key} is {found!r}, the run asks for {asked!r}" for key, (found, asked) in pairs.items() if found != asked
    ]


def check_split(directory: Path, run: RunSpec) -> None:
    """Raise ``PreparedDataMismatch`` (naming the directory and the differences) unless the split matches."""
    mismatches = split_mismatches(directory, run)
    if mismatches:
        raise PreparedDataMismatch(
            f"{run.name}: the prepared data {directory} differ from what this grid asks for: "
            f"{'; '.join(mismatches)}. Prepared data are never overwritten (finished runs used them): "
            "give this grid a data directory of its own with --data-dir."
        )


def prepare_command(run: RunSpec, out: Path) -> list[str]:
    dataset = run.dataset
    command = [
        sys.executable, str(PREPARE_SCRIPT), dataset.format, "--src", str(resolve(dataset.src)), "--out", str(out),
        "--train-size", str(run.train_size), "--seed", str(run.split_seed),
    ]  # fmt: skip
    if dataset.val_size is not None:
        command += ["--val-size", str(dataset.val_size)]
    test_size = dataset.test_size_for(run.train_size)
    if test_size is not None:
        command += ["--test-size", str(test_size)]
    if run.method.energy_only:
        command.append("--energy-only")
    return command + list(dataset.prepare_args)


def prepare_split(run: RunSpec, paths: Paths) -> Path:
    """The run's split directory: checked if it exists (``check_split``), else prepared; never overwritten.

    Only a directory without ``metadata.json`` (left by an interrupted or foreign preparation) is
    replaced. The split is prepared in a staging directory with its ``split_request.json`` and
    renamed into place, so a concurrent runner either finds it complete or not at all.
    """
    out = paths.data(run)
    if (out / "metadata.json").is_file():
        check_split(out, run)
        return out
    if out.exists():
        check_replaceable(out, DATASET_ENTRIES, "a partly prepared dataset")  # never what piwsl did not write
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    try:
        staged = staging / out.name
        result = subprocess.run(prepare_command(run, staged), capture_output=True, text=True, cwd=ROOT)
        if result.returncode != 0:
            raise RunFailed(f"preparing {out} failed: {result.stderr.strip().splitlines()[-1:]}")
        write_json_atomic(
            staged / SPLIT_REQUEST_FILE, split_request(run) | {"command": portable(prepare_command(run, out))}
        )
        if out.exists() and not (out / "metadata.json").is_file():
            check_replaceable(out, DATASET_ENTRIES, "a partly prepared dataset")
            shutil.rmtree(out)
        try:
            os.rename(staged, out)
        except OSError:
            if not (out / "metadata.json").is_file():
                raise
            check_split(out, run)  # another runner prepared it meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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
    """Everything merged onto the base config: model file, grid overrides, data paths, steps, time budget."""
    data = paths.data(run)
    fixed = {
        "dataset": {"train": {"src": relative(data / "train")}, "val": {"src": relative(data / "val")}, "test": None},
        "optim": {"max_steps": run.max_steps},
    }
    if run.wall_clock_source is not None:
        fixed["optim"][WALL_SECONDS_KEY] = round(wall_clock_budget(run, paths), 1)
    return merge(merge(model_overrides(run), run.overrides), fixed)


def wall_clock_budget(run: RunSpec, paths: Paths) -> float:
    """The training time of ``run``'s wall-clock source run; ``WaitingForRun`` if that run is not done."""
    source = run.wall_clock_source
    result = read_result(paths.result_file(source))
    current = config_hash(source, paths)
    if result is None or result.get("config_hash") != current:
        raise WaitingForRun(
            f"{run.name}: its wall-clock budget is the training time of run {source.name}, which is not done; "
            f"run that first (--only '{source.name}')"
        )
    return training_seconds(result)


def render_config(run: RunSpec, paths: Paths) -> str:
    """The YAML of the run's config: the base config included, the overrides on top.

    A fine-tuning run (``run.pretrained``) gets main.py's ``finetune`` section with the pretrained
    run's best checkpoint (``pretrained_checkpoint``: raises unless that run is finished).
    """
    if not run.base_config.is_file():
        raise RunFailed(f"{run.name}: base config {relative(run.base_config)} does not exist")
    header = (
        f"# {run.name}: generated by scripts/run_experiments.py; do not edit.\n"
        f"# Base config {relative(run.base_config)}; the test split is evaluated after training, not during it.\n"
    )
    content = {"includes": [str(run.base_config)]} | run_overrides(run, paths)
    if run.pretrained is not None:
        checkpoint, _ = pretrained_checkpoint(run, paths)
        content["finetune"] = merge(run.method.finetune, {"checkpoint": relative(checkpoint)})
    return header + yaml.safe_dump(content, sort_keys=False)


def pretrained_checkpoint(run: RunSpec, paths: Paths) -> tuple[Path, str]:
    """The best checkpoint of the run ``run`` fine-tunes from and the digest of its weights
    (``piwsl.checkpointing.weights_digest``) that the pretraining run's results record.

    The digest comes from the results, so a fine-tuning run's config hash, and whether it is done,
    are known without the checkpoint file (results committed, checkpoints not: a fresh clone has
    none); ``check_pretrained_file`` checks the file before a fine-tuning run trains. Raises
    ``PretrainingNotFinished`` unless that run has results with its current config hash and either
    they record the digest or its ``best_checkpoint.pt`` exists here (results of an older runner).
    """
    source = run.pretrained
    if source is None:
        raise ValueError(f"{run.name} is not a fine-tuning run")
    try:
        source_hash = config_hash(source, paths)
    except PretrainingNotFinished as error:
        raise PretrainingNotFinished(
            f"{run.name}: fine-tunes from {source.name}, which waits itself: {error}"
        ) from None
    result = read_result(paths.result_file(source))
    checkpoint = paths.checkpoint_dir(run_id(source, source_hash)) / "best_checkpoint.pt"
    recorded = None if result is None else result.get(DIGEST_KEY)
    if result is None or result.get("config_hash") != source_hash or (recorded is None and not checkpoint.is_file()):
        raise PretrainingNotFinished(
            f"{run.name}: fine-tunes from {source.name}, which is not finished (no results with its current "
            f"config hash {source_hash}); train it first (the runner runs it first when both are selected)"
        )
    return checkpoint, recorded or checkpoint_digest(checkpoint)


def checkpoint_digest(path: Path) -> str:
    """``weights_digest`` of a checkpoint file, cached per file version (size, modification time)."""
    return cached_per_version(weights_digest, path)


def check_pretrained_file(run: RunSpec, paths: Paths) -> Path:
    """The pretrained checkpoint a fine-tuning run is about to train from, checked against the digest its
    pretraining run's results record; ``PretrainedCheckpointMissing`` if it is not here or differs."""
    checkpoint, recorded = pretrained_checkpoint(run, paths)
    if not checkpoint.is_file():
        raise PretrainedCheckpointMissing(
            f"{run.name}: the best checkpoint of its pretraining run {run.pretrained.name} is not on this machine "
            f"({relative(checkpoint)}; its results came from elsewhere): train that run again first"
        )
    if checkpoint_digest(checkpoint) != recorded:
        raise PretrainedCheckpointMissing(
            f"{run.name}: {relative(checkpoint)} holds other weights than the results of {run.pretrained.name} "
            f"record (digest {recorded[:12]}); train that run again first"
        )
    return checkpoint


def config_hash(run: RunSpec, paths: Paths, text: str | None = None) -> str:
    """``hash_config`` of the run's config (``text``, else rendered) and of its pretrained checkpoint's SHA-256."""
    text = render_config(run, paths) if text is None else text
    pretrained = pretrained_checkpoint(run, paths)[1] if run.pretrained is not None else None
    return hash_config(text, run.seed, pretrained)


def resolved_config(text: str) -> dict:
    """The config a generated config text stands for, its includes merged (as ``main.py`` reads it)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.yml"
        path.write_text(text)
        resolved, _, _ = load_config(path)
    return resolved


def hash_config(text: str, seed: int, pretrained_digest: str | None = None) -> str:
    """The hash identifying a run's results and checkpoints: of its resolved config, its seed and the
    weights digest of the checkpoint it is fine-tuned from (if any)."""
    content = {"config": resolved_config(text), "seed": seed}
    if pretrained_digest is not None:
        content["pretrained_weights_digest"] = pretrained_digest
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_config(run: RunSpec, paths: Paths) -> tuple[Path, str, str]:
    """Write the run's config; return its path, text and hash (``hash_config``)."""
    text = render_config(run, paths)
    path = paths.config_file(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path, text, config_hash(run, paths, text)


def run_id(run: RunSpec, config_hash: str) -> str:
    """The checkpoint directory name: a changed config trains anew instead of resuming."""
    return f"{run.name}-{config_hash}"


# ---------------------------------------------------------------------------------------------- status
def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def identical_finished_run(run: RunSpec, paths: Paths, config_hash: str) -> dict | None:
    """The results of another run of the grid with the same config hash (resolved config, seed and
    pretrained checkpoint), finished by its own training; None if there is none."""
    for path in sorted(paths.runs_dir.glob("*.json")):
        if path.name.endswith(".failed.json") or path == paths.result_file(run):
            continue
        result = read_result(path)
        if result is not None and result.get("config_hash") == config_hash and "reused_from" not in result:
            return result
    return None


def run_status(run: RunSpec, paths: Paths) -> str:
    """``done`` (results with the current config hash), ``partial`` (a checkpoint to resume), ``todo``, or
    ``waiting`` (a fine-tuning run whose pretraining run is not finished).

    Writes nothing (``--list`` only looks). A run waiting for its wall-clock source run is
    ``waiting for <source run>``.
    """
    try:
        current = config_hash(run, paths)
    except WaitingForRun:
        return f"waiting for {run.wall_clock_source.name}"
    except PretrainingNotFinished:
        return "waiting"
    if is_current(read_result(paths.result_file(run)), run, current):
        return "done"
    if (paths.checkpoint_dir(run_id(run, current)) / "checkpoint.pt").is_file():
        return "partial"
    twin = identical_finished_run(run, paths, current)
    if twin is not None:
        return f"todo (same config as {twin['run']}: its results are copied, nothing is trained)"
    if pretrained_file_missing(run, paths):
        return f"todo (after {run.pretrained.name}, whose checkpoint is not here, is trained again)"
    return "todo"


def pretrained_file_missing(run: RunSpec, paths: Paths) -> bool:
    """Whether ``run`` fine-tunes from a finished pretraining run whose best checkpoint is not here."""
    return run.pretrained is not None and not pretrained_checkpoint(run, paths)[0].is_file()


# ---------------------------------------------------------------------------------------------- execution
def train_command(run: RunSpec, paths: Paths, config_file: Path, identifier: str, cpu: bool) -> list[str]:
    command = [
        sys.executable, str(TRAIN_SCRIPT), "--mode", "train", "--config", str(config_file),
        "--run-dir", str(paths.work_dir), "--identifier", run.name, "--timestamp-id", identifier,
        "--seed", str(run.seed), "--print-every", "25",
    ]  # fmt: skip
    return command + (["--cpu"] if cpu else [])


def stop_training(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM a running training subprocess (it saves a step-boundary checkpoint and exits) and wait; kill it late."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def forwarding_signals(process: subprocess.Popen, enabled: bool = True) -> Iterator[list[int]]:
    """While the block runs, SIGTERM/SIGINT to this process stop ``process`` instead of this one.

    The first signal sends it SIGTERM (the trainer saves a checkpoint at the next step boundary and
    exits), a second one SIGKILL. Yields the signals received; does nothing outside the main thread.
    """
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def forward(signal_number: int, _frame: Any) -> None:
        received.append(signal_number)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM if len(received) == 1 else signal.SIGKILL)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def run_lock(run: RunSpec, checkpoint_dir: Path) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``checkpoint_dir/runner.lock``; yield its file descriptor.

    Raises ``RunLocked`` if another runner (or a training subprocess it left running) holds it.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_dir / LOCK_FILE
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(
                f"{run.name}: another runner is training this run now (it holds the lock {path}); "
                "wait for it to finish or stop it"
            ) from None
        yield handle.fileno()


def _train(
    run: RunSpec,
    paths: Paths,
    command: list[str],
    timing_file: Path,
    progress: bool = False,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    lock_descriptor: int | None = None,
    forward_signals: bool = True,
) -> list[dict]:
    """Run the training subprocess with a progress bar read from its log; return the run id's attempts.

    Every attempt's wall time (s) goes to ``timing_file``, also when training fails or is stopped.
    The subprocess inherits ``lock_descriptor``, so the run stays locked while it lives. With
    ``forward_signals``, SIGTERM/SIGINT stop the subprocess cleanly (``forwarding_signals``) and
    then this process, with ``SystemExit(128 + signal)``.
    """
    log = paths.log_file(run)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(command)}\n")
        handle.flush()
        started = time.perf_counter()
        environment = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=environment,
            pass_fds=() if lock_descriptor is None else (lock_descriptor,),
            start_new_session=forward_signals,  # a terminal's Ctrl+C reaches it only as the forwarded SIGTERM
        )
        try:
            with forwarding_signals(process, forward_signals) as received:
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
        finally:
            stop_training(process)
            _record_attempt(timing_file, time.perf_counter() - started, process.returncode)
    if received:
        tqdm.write(f"{run.name}: stopped by signal {received[0]}; rerunning the command resumes it from its checkpoint")
        raise SystemExit(128 + received[0])
    if process.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RunFailed(f"{run.name}: training exited with {process.returncode} (log {log}):\n{tail}")
    return read_result(timing_file)


def _record_attempt(path: Path, wall: float, returncode: int | None) -> None:
    """Append one training attempt (wall time in s, exit code) to the run id's timing file."""
    attempts = read_result(path) or []
    finished = datetime.datetime.now().isoformat(timespec="seconds")
    attempts.append({"finished_at": finished, "wall_s": wall, "returncode": returncode})
    write_json_atomic(path, attempts)


def cpu_description() -> str:
    """The CPU model and the cores this process may use (training times of runs on different CPUs differ)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _pretrained_record(run: RunSpec, paths: Paths) -> dict | None:
    """The run a fine-tuning run started from: its name, best checkpoint and that checkpoint's weights digest."""
    if run.pretrained is None:
        return None
    checkpoint, digest = pretrained_checkpoint(run, paths)
    return {"run": run.pretrained.name, "checkpoint": relative(checkpoint), DIGEST_KEY: digest}


def evaluation_splits(data: Path, options: Options) -> list[str]:
    """The splits a run is tested on: ``options.eval_split``, and for ``test`` every extra test split prepared."""
    if options.eval_split != "test":
        return [options.eval_split]
    return ["test"] + [name for name in EXTRA_SPLITS if (data / name).is_dir()]


def evaluate_run(checkpoint: Path, data: Path, options: Options, splits: list[str]) -> dict:
    """Split name -> errors of ``checkpoint`` on that split of ``data`` (kcal/mol, kcal/mol/Å); trainer freed after."""
    from piwsl.evaluate import evaluate, load_trainer

    trainer = load_trainer(checkpoint, cpu=options.use_cpu())
    try:
        return {
            name: asdict(evaluate(trainer, data / name, options.eval_batch_size, options.progress)) for name in splits
        }
    finally:
        del trainer
        gc.collect()


def record_failure(run: RunSpec, paths: Paths, error: Exception) -> RunFailed:
    """Write the run's ``.failed.json`` for ``error``; return it as a ``RunFailed`` (chained to ``error``)."""
    failure = error if isinstance(error, RunFailed) else RunFailed(f"{run.name}: {error!r}")
    if failure is not error:
        failure.__cause__ = error
    details = {"error": str(failure), "traceback": "".join(traceback.format_exception(error))}
    write_json_atomic(paths.failure_file(run), run.describe() | details)
    return failure


def execute_run(
    run: RunSpec,
    paths: Paths,
    options: Options,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    forward_signals: bool = True,
    retrain: bool = False,
) -> dict:
    """Prepare, train (or resume), evaluate and record one run under its lock; return its results.

    Any error of the run is written to its ``.failed.json`` and raised as ``RunFailed`` (the
    original chained), except ``RunLocked``: another runner is busy with the run, nothing failed.
    ``on_start`` gets the training subprocess; ``forward_signals``: see ``_train``. ``retrain``
    trains a finished run again (a pretraining run whose checkpoint is not on this machine) instead
    of returning its results.
    """
    import torch

    from piwsl.config import PIWSLConfig

    try:
        config_file, config_text, config_hash = write_config(run, paths)
        identifier = run_id(run, config_hash)
        checkpoint_dir = paths.checkpoint_dir(identifier)
        with run_lock(run, checkpoint_dir) as lock_descriptor:
            finished = read_result(paths.result_file(run))
            if is_current(finished, run, config_hash):
                if not retrain or (checkpoint_dir / "best_checkpoint.pt").is_file():
                    return finished  # another runner finished it meanwhile
            twin = None if retrain else identical_finished_run(run, paths, config_hash)
            if twin is not None:
                result = twin | run.describe() | {"reused_from": twin["run"]}
                write_json_atomic(paths.result_file(run), result)
                paths.failure_file(run).unlink(missing_ok=True)
                return result
            if run.pretrained is not None:
                check_pretrained_file(run, paths)
            data = prepare_split(run, paths)
            check_checkpoint_split(run, checkpoint_dir)
            command = train_command(run, paths, config_file, identifier, options.use_cpu())
            attempts = _train(
                run,
                paths,
                command,
                paths.timing_file(identifier),
                options.progress,
                on_start,
                lock_descriptor,
                forward_signals,
            )
            best = checkpoint_dir / "best_checkpoint.pt"
            if not best.is_file():
                raise RunFailed(f"{run.name}: no best_checkpoint.pt in {checkpoint_dir} (did validation run?)")
            final = torch.load(checkpoint_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
            best_state = torch.load(best, map_location="cpu", weights_only=False)
            started = time.perf_counter()
            splits = evaluation_splits(data, options)
            errors = evaluate_run(best, data, options, splits)
            eval_wall = time.perf_counter() - started
            metadata = json.loads((data / "metadata.json").read_text())
            convergence = final["config"].get(CONVERGENCE_KEY)
            result = run.describe() | {
                "config_hash": config_hash,
                "run_id": identifier,
                "base_config": relative(run.base_config),
                "config_yaml": config_text,
                "command": portable(command),
                "piwsl": asdict(PIWSLConfig.from_dict(final["config"]["optim"].get("piwsl"))),
                "steps": int(final["step"]),
                "convergence": convergence,
                "max_wall_seconds": final["config"]["optim"].get(WALL_SECONDS_KEY),
                "train_wall_s": sum(attempt["wall_s"] for attempt in attempts),
                "attempts": len(attempts),
                "eval_wall_s": eval_wall,
                "data": relative(data),
                "split_sizes": metadata["split_sizes"],
                "split_by": metadata.get("split_by", "conformation"),
                "split_request": recorded_split_request(run),
                "test_splits": splits,
                "best_checkpoint": relative(best),
                DIGEST_KEY: checkpoint_digest(best),
                "val_metrics": {key: value["metric"] for key, value in (best_state.get("val_metrics") or {}).items()},
                "val_curve": validation_curve(paths.tensorboard_dir(identifier)),
                "pretrained": _pretrained_record(run, paths),
                **errors,
                "host": socket.gethostname(),
                "device": "cpu" if options.use_cpu() else torch.cuda.get_device_name(),
                "cpu": cpu_description(),
                "git_commit": _git_commit(),
                "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
            }
            write_json_atomic(paths.result_file(run), result)
    except RunLocked:
        raise
    except Exception as error:
        failure = record_failure(run, paths, error)
        if failure is error:
            raise
        raise failure from error
    paths.failure_file(run).unlink(missing_ok=True)
    return result


def validation_curve(logs_dir: Path) -> dict[str, dict[str, list[float]]] | None:
    """Every validation term a run logged, ``{term: {"step": [...], "value": [...]}}`` (one value per
    step: the last logged, as after a resumed attempt), or None without tensorboard logs. Results keep
    it so that learning curves survive the work directory (checkpoints and logs are not committed)."""
    from piwsl.plots import read_scalars

    if not any(logs_dir.glob("events.out.tfevents.*")):
        return None
    curve = {}
    for term, splits in sorted(read_scalars(logs_dir).items()):
        if "val" not in splits:
            continue
        by_step = dict(zip(splits["val"][0].tolist(), splits["val"][1].tolist(), strict=True))
        steps = sorted(by_step)
        curve[term] = {"step": [int(step) for step in steps], "value": [float(by_step[step]) for step in steps]}
    return curve or None


def run_locally(runs: Iterable[RunSpec], paths: Paths, options: Options) -> list[str]:
    """Execute the runs one after another, skipping finished ones; return the failures' messages.

    Pretraining runs go before the runs fine-tuned from them; a fine-tuning run whose pretraining
    run is not finished is refused (one line, no failure record). A failing run (its
    ``.failed.json`` written) or one another runner is busy with does not stop the others;
    SIGTERM/SIGINT stop the current training cleanly and then the whole grid.
    """
    runs = pretraining_first(list(runs))
    failures = []
    bar = tqdm(runs, desc="runs", unit="run", disable=not options.progress)
    for run in bar:
        bar.set_postfix_str(run.name)
        try:
            status = run_status(run, paths)
            if status == "done":
                continue
            if status == "waiting":  # its pretraining run failed or is not among the selected runs
                failures.append(str(_waiting(run, paths)))
                tqdm.write(f"FAILED {failures[-1]}")
                continue
            if status.startswith("waiting for"):
                failures.append(f"{run.name}: not run, {status} (its wall-clock budget)")
                tqdm.write(f"SKIPPED {failures[-1]}")
                continue
        except Exception as error:
            failures.append(str(record_failure(run, paths, error)))
            tqdm.write(f"FAILED {failures[-1]}")
            continue
        try:
            if pretrained_file_missing(run, paths):
                retrain_pretraining(run, paths, options)
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


def retrain_pretraining(run: RunSpec, paths: Paths, options: Options) -> None:
    """Train the finished pretraining run of ``run`` again because its best checkpoint is not here.

    Training is deterministic on the CPU: the same settings give the same weights digest, and
    fine-tuning runs finished from the original checkpoint stay current; other weights (another
    machine or device) make them stale, and they are trained again when selected.
    """
    source = run.pretrained
    recorded = pretrained_checkpoint(run, paths)[1]
    tqdm.write(
        f"{source.name}: trained again: {run.name} fine-tunes from its best checkpoint, which is not on this "
        "machine (its results came from elsewhere)"
    )
    result = execute_run(source, paths, options, retrain=True)
    same = result.get(DIGEST_KEY) == recorded
    tqdm.write(
        f"{source.name}: "
        + ("the same weights as recorded" if same else "other weights than recorded: its fine-tuning runs are stale")
    )


def _waiting(run: RunSpec, paths: Paths) -> PretrainingNotFinished:
    """The error that says why ``run`` waits for its pretraining run."""
    try:
        pretrained_checkpoint(run, paths)
    except PretrainingNotFinished as error:
        return error
    return PretrainingNotFinished(f"{run.name}: its pretraining run {run.pretrained.name} is not finished")


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

    def __call__(self, run: RunSpec, paths: Paths, options: Options, retrain: bool = False) -> dict:
        return execute_run(run, paths, options, on_start=self._remember, forward_signals=False, retrain=retrain)

    def _remember(self, process: subprocess.Popen) -> None:
        self.process = process

    def checkpoint(self, run: RunSpec, paths: Paths, options: Options, retrain: bool = False):
        from submitit.helpers import DelayedSubmission

        if self.process is not None:
            stop_training(self.process)
        return DelayedSubmission(SlurmRun(), run, paths, options, retrain)


def submit_slurm(runs: list[RunSpec], paths: Paths, options: Options, slurm: SlurmOptions, name: str) -> list[str]:
    """Prepare every split here, then submit the unfinished runs as one SLURM array; return job ids."""
    from submitit import AutoExecutor

    statuses = {run.name: run_status(run, paths) for run in runs}
    waiting = [name for name, status in statuses.items() if status.startswith("waiting")]
    # fine-tuning runs whose finished pretraining run's checkpoint is not here: that run is trained again
    retrain = {
        run.pretrained.name: run.pretrained
        for run in runs
        if statuses[run.name] != "done" and run.name not in waiting and pretrained_file_missing(run, paths)
    }
    waiting += [
        run.name
        for run in runs
        if statuses[run.name] != "done" and run.pretrained is not None and run.pretrained.name in retrain
    ]
    if waiting:  # array tasks run side by side: these go in a later submission
        print(
            "not submitted, their pretraining or wall-clock source runs are not done (submit again then): "
            + ", ".join(dict.fromkeys(waiting)),
            file=sys.stderr,
        )
    pending = [run for run in runs if statuses[run.name] != "done" and run.name not in waiting]
    pending += [source for source in retrain.values() if source not in pending]
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
    flags = [run.name in retrain for run in pending]
    jobs = executor.map_array(SlurmRun(), pending, [paths] * count, [quiet] * count, flags)
    return [job.job_id for job in jobs]


def grid_description(grid: Grid, paths: Paths) -> dict[str, Any]:
    """The studies, their runs, each run's current config hash (None where its config cannot be made) and
    the split it asks for."""
    hashes = {}
    for run in grid.runs:
        try:
            hashes[run.name] = config_hash(run, paths)
        except RunFailed:
            hashes[run.name] = None
    requests = {run.name: recorded_split_request(run) for run in grid.runs}
    return grid.describe() | {"config_hashes": hashes, "split_requests": requests}


def write_grid_description(grid: Grid, paths: Paths) -> None:
    """``RESULTS/grid.json``: what the aggregation lays tables out by and checks the results against."""
    write_json_atomic(paths.results_dir / "grid.json", grid_description(grid, paths))
