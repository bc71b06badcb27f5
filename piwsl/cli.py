"""``main.py``: fairchem's command line, with the ``piwsl`` trainer registered and configs checked.

Every flag of fairchem's CLI works (``--mode``, ``--config-yml``/``--config``, ``--cpu``,
``--num-gpus``, ``--submit`` and the ``--slurm-*`` flags, ``--run-dir``, ``--identifier``,
``--seed``, dotted overrides such as ``--optim.max_epochs=1``). Before anything starts, the
config's top-level ``piwsl`` section is checked (unknown keys and bad values are errors) and moved
to ``optim.piwsl`` where the trainer reads it, and missing datasets are reported in one line.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from fairchem.core._cli import Runner
from fairchem.core.common import distutils
from fairchem.core.common.flags import Flags
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import build_config, save_experiment_log, setup_imports, setup_logging
from submitit.helpers import DelayedSubmission

import piwsl.trainer  # noqa: F401  (registers the "piwsl" trainer and piwsl's backbones)
from piwsl.checkpointing import CheckpointError
from piwsl.config import PIWSLConfig, PIWSLConfigError
from piwsl.cpu_memory import tune_malloc_for_tensors
from piwsl.dataset_checks import DatasetError, check_disjoint, check_readable, check_units
from piwsl.slurm import SlurmError, check_slurm_tools, cpu_job_config, expand_sweep

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
    finally:
        distutils.cleanup()  # fairchem leaves its process group open when the trainer fails to build


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
        "name": "ocp",
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
    return parser


def prepare_config(config: dict) -> dict:
    """Check the piwsl section and dataset paths, and put the section where the trainer reads it."""
    config = copy.deepcopy(config)
    preparation = config.pop(PREPARATION_KEY, None)
    units = config.pop(UNITS_KEY, None)
    section = config.pop("piwsl", None)
    optim = config.setdefault("optim", {})
    if section is not None and "piwsl" in optim:
        raise ConfigError("the piwsl settings are given twice, top-level 'piwsl' and 'optim.piwsl': keep one")
    if section is not None:
        optim["piwsl"] = section
    if config.get("trainer", "piwsl") == "piwsl" or "piwsl" in optim:
        PIWSLConfig.from_dict(optim.get("piwsl"), where="piwsl")
    if config.get("mode", "train") == "train":
        check_datasets(config, preparation, units)
    if config.get("timestamp_id") is None:
        config["timestamp_id"] = run_id(config)
    return config


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
    """Fail in one line when a dataset is missing, unreadable, in other units, or overlaps training."""
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
            check_readable(Path(source))
            if units:
                check_units(Path(source), units)
        except DatasetError as error:
            raise ConfigError(f"{split} dataset: {error}") from error
        sources[split] = Path(source)
    for split in ("val", "test"):
        if "train" in sources and split in sources and sources[split] != sources["train"]:
            try:
                check_disjoint(sources["train"], sources[split], split)
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


def run(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.config_yml is None:
        raise ConfigError("no config given: pass --config PATH (e.g. configs/ani1x/painn_piwsl.yml)")
    if not Path(args.config_yml).exists():
        raise ConfigError(f"config file not found: {args.config_yml}")
    if args.sweep_yml is not None and not args.submit:
        raise ConfigError(
            "--sweep-yml runs its configs as a SLURM array and needs --submit (as in fairchem); for a local grid "
            "use scripts/run_experiments.py"
        )
    if args.submit:
        raw = build_config(args, overrides)
        variants = expand_sweep(raw, args.sweep_yml) if args.sweep_yml is not None else [raw]
        submit(args, [prepare_config(variant) for variant in variants])
        return
    config = prepare_config(build_config(args, overrides))
    if args.num_gpus > 1:
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        config.setdefault("optim", {})["num_workers"] = 0
        launch = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=args.num_gpus, rdzv_backend="c10d", max_restarts=0
        )
        elastic_launch(launch, run_config)(config)
    else:
        distutils.setup_env_local()
        run_config(config)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args, overrides = get_parser().parse_known_args(argv)
    try:
        run(args, overrides)
    except (ConfigError, PIWSLConfigError, CheckpointError, SlurmError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
