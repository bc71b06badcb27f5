"""``main.py``: fairchem's command line, with the ``piwsl`` trainer registered and configs checked.

Every flag of fairchem's CLI works (``--mode``, ``--config-yml``/``--config``, ``--cpu``,
``--num-gpus``, ``--submit`` and the ``--slurm-*`` flags, ``--run-dir``, ``--identifier``,
``--seed``, dotted overrides such as ``--optim.max_epochs=1``). Before anything starts, the
config's keys are checked (``piwsl.config_checks``: unknown keys and bad values are errors naming
the closest valid key), its top-level ``piwsl`` section is checked and moved to ``optim.piwsl``
where the trainer reads it, and the datasets are checked (present, readable, finite labels,
disjoint splits). Training holds the run's lock (``piwsl.run_lock``). Every error caused by the
user's input is one line on stderr: exit code 2 for bad input, 1 for a run that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from fairchem.core._cli import Runner
from fairchem.core.common import distutils
from fairchem.core.common.flags import Flags
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import build_config, save_experiment_log, setup_imports, setup_logging
from submitit.helpers import DelayedSubmission

import piwsl.trainer  # noqa: F401  (registers the "piwsl" trainer and piwsl's backbones)
from piwsl.checkpointing import CheckpointError, OutputError
from piwsl.config import PIWSLConfig, PIWSLConfigError
from piwsl.config_checks import ConfigKeyError, check_config, check_model_keys, check_overrides, closest
from piwsl.cpu_memory import tune_malloc_for_tensors
from piwsl.dataset_checks import DatasetError, check_readable, check_splits, check_units
from piwsl.finetune import OPTIM_KEY as FINETUNE_KEY
from piwsl.finetune import FinetuneConfig, FinetuneError
from piwsl.run_lock import RunLockedError, locked_run
from piwsl.slurm import SlurmError, check_slurm_tools, cpu_job_config, expand_sweep
from piwsl.step_guard import TrainingDiverged

#: Top-level keys of our configs that fairchem does not know and main.py consumes.
PREPARATION_KEY = "dataset_preparation"
UNITS_KEY = "units"
#: Config keys that name where and how a run executes, not what it computes.
_RUN_KEYS = (
    "timestamp_id",
    "checkpoint",
    "run_dir",
    "submit",
    "summit",
    "slurm",
    "local_rank",
    "world_size",
    "distributed_backend",
    "print_every",
    "is_debug",
    "mode",
    "cpu",
    "gp_gpus",
    "amp",
)


class ConfigError(ValueError):
    """A config that cannot run; the message says what to change."""


#: Errors of the user's input or settings: one line, exit code 2.
INPUT_ERRORS = (
    ConfigError,
    PIWSLConfigError,
    ConfigKeyError,
    CheckpointError,
    DatasetError,
    RunLockedError,
    SlurmError,
    FinetuneError,
)
#: Runs that failed on the way (diverged, output not writable): one line, exit code 1.
RUN_ERRORS = (TrainingDiverged, OutputError)


class PIWSLRunner(Runner):
    """fairchem's runner; unpickled in SLURM jobs and DDP workers, where importing this module registers piwsl."""

    def __call__(self, config: dict) -> None:
        """fairchem's run; after training, the learning curves are drawn into the run's logs directory.

        A ``--submit --cpu`` job sets itself up from SLURM's variables over gloo (``slurm.cpu_job_config``):
        fairchem's own SLURM set-up needs CUDA and NCCL.
        """
        self._submitted = bool(config.get("submit"))
        if self._submitted and config.get("cpu"):
            config = cpu_job_config(config)
        super().__call__(config)
        if config.get("mode") == "train" and distutils.is_master():
            plot_run_learning_curves(self.trainer)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """On SLURM pre-emption, requeue the same run; it resumes from its last step-boundary checkpoint.

        fairchem's runner saves here, from a signal handler that may interrupt a step half-way;
        the trainer's own boundary checkpoints are consistent, so we only point the new job at them.
        """
        self.config["timestamp_id"] = self.trainer.timestamp_id
        self.config["checkpoint"] = None
        self.config["submit"] = getattr(self, "_submitted", self.config.get("submit"))
        logging.info(f"pre-empted: requeueing run {self.config['timestamp_id']} to resume from its checkpoint")
        return DelayedSubmission(PIWSLRunner(), self.config)


def plot_run_learning_curves(trainer) -> None:
    """``learning_curves.png`` in the trainer's tensorboard logs directory; a failure only logs a warning."""
    writer = getattr(getattr(trainer, "logger", None), "writer", None)
    if writer is None:
        return
    writer.flush()
    from piwsl.plots import plot_learning_curves

    logs = Path(trainer.config["cmd"]["logs_dir"])
    try:
        logging.info(f"learning curves: {plot_learning_curves(logs, logs / 'learning_curves.png')}")
    except Exception as error:  # a figure must never fail a finished training run
        logging.warning(f"learning curves not drawn ({error}); draw them with scripts/plot_learning_curves.py {logs}")


def run_config(config: dict) -> None:
    """Entry point of each local or DDP rank."""
    if config.get("cpu") or not torch.cuda.is_available():
        tune_malloc_for_tensors()
    try:
        PIWSLRunner()(config)
    finally:  # fairchem leaves its process group behind when the run fails; a later run here would not start
        distutils.cleanup()


def build_trainer(config: dict, **overrides: Any):
    """A trainer built from a full config dict (as ``main.py`` would), for notebooks and tests."""
    config = prepare_config(config)
    setup_imports(config)
    arguments = {
        "task": config.get("task", {}),
        "model": config["model"],
        "outputs": config.get("outputs", {}),
        "dataset": config["dataset"],
        "optimizer": config["optim"],
        "loss_functions": config.get("loss_functions", {}),
        "evaluation_metrics": config.get("evaluation_metrics", {}),
        "identifier": config.get("identifier", ""),
        "timestamp_id": config.get("timestamp_id"),
        "run_dir": config.get("run_dir", "./"),
        "seed": config.get("seed", 0),
        "logger": config.get("logger", "tensorboard"),
        "local_rank": config.get("local_rank", 0),
        "print_every": config.get("print_every", 10),
        "cpu": config.get("cpu", True),
    }
    arguments.update(overrides)
    return registry.get_trainer_class(config.get("trainer", "piwsl"))(**arguments)


def get_parser() -> argparse.ArgumentParser:
    parser = Flags().get_parser()
    for action in parser._actions:
        if action.dest == "config_yml":
            action.required = False
    parser.description = (
        "Train, validate or predict with fairchem models and physics-informed weak supervision "
        "(PITC/PISC). The config's 'piwsl' section selects the method; see README.md."
    )
    parser.add_argument(
        "--config",
        dest="config_yml",
        type=Path,
        help="Alias of --config-yml: path to the YAML config (includes: are resolved relative to it).",
    )
    parser.add_argument(
        "--finetune-from",
        type=Path,
        default=None,
        metavar="CKPT",
        help="Start from the model weights of this checkpoint (piwsl's or fairchem's, same backbone and size) "
        "with a fresh optimizer, schedule and normalizers: sets finetune.checkpoint (see the config's "
        "'finetune' section for freezing parameters).",
    )
    return parser


def prepare_config(config: dict) -> dict:
    """Check the config's keys, the piwsl section and dataset paths; put the section where the trainer reads it."""
    check_config(config)
    config = copy.deepcopy(config)
    preparation = config.pop(PREPARATION_KEY, None)
    units = config.pop(UNITS_KEY, None)
    section = config.pop("piwsl", None)
    optim = config.setdefault("optim", {})
    finetune = config.pop(FINETUNE_KEY, None)
    if finetune is not None:
        settings = FinetuneConfig.from_dict(finetune)
        if not Path(settings.checkpoint).is_file():
            raise ConfigError(f"finetune.checkpoint not found: {settings.checkpoint}")
        optim[FINETUNE_KEY] = finetune
    if section is not None and "piwsl" in optim:
        raise ConfigError("the piwsl settings are given twice, top-level 'piwsl' and 'optim.piwsl': keep one")
    if section is not None:
        optim["piwsl"] = section
    if config.get("trainer", "piwsl") == "piwsl" or "piwsl" in optim:
        PIWSLConfig.from_dict(optim.get("piwsl"), where="piwsl")
    check_model_name(config)
    if config.get("checkpoint") is not None and not Path(config["checkpoint"]).is_file():
        raise ConfigError(f"checkpoint not found: {config['checkpoint']}")
    mode = config.get("mode", "train")
    if mode == "train":
        check_datasets(config, preparation, units)
    elif mode in ("predict", "validate"):
        split = "test" if mode == "predict" else "val"
        settings = (config.get("dataset") or {}).get(split) if isinstance(config.get("dataset"), dict) else None
        if not isinstance(settings, dict) or not settings.get("src"):
            raise ConfigError(f"--mode {mode} needs a {split} set: set dataset.{split}.src (--dataset.{split}.src=DIR)")
        if not Path(settings["src"]).exists():
            raise ConfigError(f"{split} dataset not found: {settings['src']}")
    if config.get("timestamp_id") is None:
        config["timestamp_id"] = run_id(config)
    return config


def check_model_name(config: dict) -> None:
    """An unknown ``model.name`` is an error listing the registered backbones, an unknown ``model`` key too."""
    model = config.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    if name is None:
        raise ConfigError("the config has no model.name (e.g. painn); see configs/")
    setup_imports(config)
    try:
        backbone = registry.get_model_class(name)
    except RuntimeError:
        known = sorted(registry.mapping["model_name_mapping"])
        raise ConfigError(
            f"unknown model.name '{name}'{closest(name, known)}; registered: {', '.join(known)}"
        ) from None
    check_model_keys(model, backbone)


def run_id(config: dict) -> str:
    """A run id fixed by what the run computes, so that rerunning a command resumes it.

    fairchem derives ids from the clock; ours is ``<identifier>-<hash of the config>``, so the
    same command finds its own ``checkpoint.pt`` and continues, and any change of settings
    (seed included) starts a new run.
    """
    content = {key: value for key, value in config.items() if key not in _RUN_KEYS}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config.get('identifier') or 'run'}-{digest}"


def check_datasets(config: dict, preparation: str | None, units: dict[str, str] | None) -> None:
    """Fail in one line when a dataset is missing, unreadable, empty, in other units, has non-finite labels,
    or overlaps training."""
    datasets = config.get("dataset", {})
    splits = datasets.items() if isinstance(datasets, dict) and "train" in datasets else [("train", datasets)]
    sources = {}
    for split, settings in splits:
        source = (settings or {}).get("src") if isinstance(settings, dict) else None
        if source is None:
            continue
        if not Path(source).exists():
            hint = f"; prepare it with: {' '.join(preparation.split())}" if preparation else ""
            raise ConfigError(f"{split} dataset not found: {source}{hint}")
        if (settings or {}).get("format", datasets.get("train", {}).get("format", "lmdb")) != "lmdb":
            continue
        try:
            if check_readable(Path(source)) == 0:
                raise DatasetError(f"{source} holds no structures")
            if units:
                check_units(Path(source), units)
        except DatasetError as error:
            raise ConfigError(f"{split} dataset: {error}") from error
        sources[split] = Path(source)
    try:
        check_splits(sources)
    except DatasetError as error:
        raise ConfigError(str(error)) from error


def submit(args: argparse.Namespace, configs: list[dict]) -> None:
    """Submit to SLURM through submitit (one array task per config), as fairchem's CLI does, with piwsl in the job."""
    from submitit import AutoExecutor

    check_slurm_tools()
    config = configs[0]
    executor = AutoExecutor(folder=args.logdir / "%j", slurm_max_num_timeout=3, cluster="slurm")
    executor.update_parameters(
        name=args.identifier,
        mem_gb=args.slurm_mem,
        timeout_min=args.slurm_timeout * 60,
        slurm_partition=args.slurm_partition,
        gpus_per_node=0 if args.cpu else args.num_gpus,
        cpus_per_task=config["optim"].get("num_workers", 0) + 1,
        tasks_per_node=args.num_gpus,
        nodes=args.num_nodes,
        slurm_additional_parameters=config.get("slurm", None),
        slurm_qos=args.slurm_qos,
        slurm_account=args.slurm_account,
    )
    for each in configs:
        each["slurm"] = copy.deepcopy(executor.parameters)
        each["slurm"]["folder"] = str(executor.folder)
    jobs = executor.map_array(PIWSLRunner(), configs)
    logging.info(f"Submitted jobs: {', '.join(job.job_id for job in jobs)}")
    logging.info(f"Experiment log saved to: {save_experiment_log(args, jobs, configs)}")


def read_config(args: argparse.Namespace, overrides: list[str]) -> dict:
    """fairchem's ``build_config`` (includes resolved, overrides merged), with YAML problems in one line."""
    if args.config_yml is None:
        raise ConfigError("no config given: pass --config PATH (e.g. configs/ani1x/painn_piwsl.yml)")
    if not Path(args.config_yml).is_file():
        raise ConfigError(f"config file not found: {args.config_yml}")
    try:
        content = yaml.safe_load(Path(args.config_yml).read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{args.config_yml}: not valid YAML ({yaml_problem(error)})") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{args.config_yml}: a config must be a mapping of sections (model:, optim:, ...)")
    try:
        config = build_config(args, overrides)
    except yaml.YAMLError as error:
        raise ConfigError(f"an included config is not valid YAML ({yaml_problem(error)})") from None
    except (ValueError, AttributeError) as error:  # fairchem's include errors
        raise ConfigError(f"{args.config_yml}: {error}") from None
    if getattr(args, "finetune_from", None) is not None:
        section = config.get(FINETUNE_KEY) or {}
        config[FINETUNE_KEY] = (section if isinstance(section, dict) else {}) | {"checkpoint": str(args.finetune_from)}
    return config


def yaml_problem(error: yaml.YAMLError) -> str:
    """``problem at FILE line L, column C`` of a YAML error."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if mark is None:
        return problem
    return f"{problem} at {mark.name} line {mark.line + 1}, column {mark.column + 1}"


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.num_gpus < 1:
        raise ConfigError(f"--num-gpus {args.num_gpus}: the number of ranks must be at least 1")
    if args.num_gpus > 1 and not args.cpu and not args.submit and not torch.cuda.is_available():
        raise ConfigError(
            f"--num-gpus {args.num_gpus} needs CUDA GPUs, but torch finds none here; add --cpu to run "
            f"{args.num_gpus} ranks on the CPU"
        )
    if args.sweep_yml is not None and not args.submit:
        raise ConfigError(
            "--sweep-yml runs its configs as a SLURM array and needs --submit (as in fairchem); for a local grid "
            "use scripts/run_experiments.py"
        )
    if args.submit:
        raw = read_config(args, overrides)
        variants = expand_sweep(raw, args.sweep_yml) if args.sweep_yml is not None else [raw]
        submit(args, [prepare_config(variant) for variant in variants])
        return
    config = prepare_config(read_config(args, overrides))
    checkpoint_dir = Path(config.get("run_dir") or ".") / "checkpoints" / config["timestamp_id"]
    lock = locked_run(checkpoint_dir) if config.get("mode") == "train" else contextlib.nullcontext()
    with lock:
        run_locally(args, config)


class RanksFailed(Exception):
    """A DDP rank stopped with an error that rank 0 already printed in one line."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"a rank exited with code {exit_code}")
        self.exit_code = exit_code


def run_rank(config: dict) -> None:
    """Entry point of each DDP rank: an expected error is one line (from rank 0) and the rank's exit code."""
    try:
        run_config(config)
    except INPUT_ERRORS + RUN_ERRORS as error:
        if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now
            print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2 if isinstance(error, INPUT_ERRORS) else 1) from None


def run_locally(args: argparse.Namespace, config: dict) -> None:
    """Run ``config`` here: one process, or ``--num-gpus`` ranks through torch's elastic launcher."""
    if args.num_gpus > 1:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        config.setdefault("optim", {})["num_workers"] = 0
        launch = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=args.num_gpus, rdzv_backend="c10d", max_restarts=0
        )
        # The launcher's own failure reports would follow rank 0's one-line error: silence them.
        loggers = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing.spawn")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            elastic_launch(launch, run_rank)(config)
        except ChildFailedError as failure:
            _, first = failure.get_first_failure()
            if first.exitcode not in (1, 2):
                raise
            raise RanksFailed(first.exitcode) from None
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
    else:
        distutils.setup_env_local()
        run_config(config)


#: ``errno`` values of paths that cannot be written or reached: (what failed, what it means).
PATH_ERRORS = {
    errno.ENOSPC: ("cannot write", "no space left on the device"),
    errno.EDQUOT: ("cannot write", "disk quota exceeded"),
    errno.EROFS: ("cannot write", "read-only file system"),
    errno.EACCES: ("cannot access", "permission denied"),
    errno.EPERM: ("cannot access", "permission denied"),
    errno.ENOTDIR: ("cannot access", "a part of the path is a file, not a directory"),
}


def main(argv: list[str] | None = None) -> int:
    """``main.py``: 0 on success, 2 for bad input or settings, 1 when training fails (one line each)."""
    setup_logging()
    parser = get_parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        check_overrides(overrides, parser._option_string_actions)
        run(args, overrides)
    except INPUT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RUN_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RanksFailed as failure:
        return failure.exit_code
    except OSError as error:
        if error.errno not in PATH_ERRORS:
            raise
        failed, meaning = PATH_ERRORS[error.errno]
        print(f"error: {failed} {error.filename}: {meaning}", file=sys.stderr)
        return 1
    return 0
