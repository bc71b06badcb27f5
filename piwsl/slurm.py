"""SLURM helpers for ``main.py --submit``: tool checks, ``--sweep-yml`` expansion, CPU jobs over gloo.

- submitit silently runs a job on the local machine when ``srun`` is missing (``sbatch`` alone
  does not make it choose SLURM): ``check_slurm_tools`` requires both.
- fairchem's ``create_grid`` fails on Python 3.10+ for nested sweep files
  (``collections.MutableMapping``); ``expand_sweep`` does the same expansion itself.
- fairchem's SLURM set-up hard-codes CUDA (``torch.cuda.set_device``) and NCCL; for ``--cpu``
  jobs ``cpu_job_config`` sets rank and rendezvous from SLURM's variables and sends fairchem
  down its local path with the gloo backend.
"""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: Rendezvous port of CPU jobs: this base plus the job id modulo 20,000 (jobs on one node do not collide).
PORT_BASE = 20_000


class SlurmError(ValueError):
    """A SLURM request that cannot be carried out; the message says what is missing."""


def check_slurm_tools() -> None:
    """Fail unless both ``sbatch`` and ``srun`` are on PATH (submitit would otherwise run locally)."""
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise SlurmError(
            f"--submit needs SLURM, but {' and '.join(repr(tool) for tool in missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH; run without --submit to train here"
        )


def _flatten(sweep: Mapping[str, Any], prefix: str = "") -> dict[str, list]:
    flat: dict[str, list] = {}
    for key, value in sweep.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat |= _flatten(value, name)
        elif isinstance(value, list) and value:
            flat[name] = value
        else:
            raise SlurmError(f"sweep key '{name}' must hold a non-empty list of values, not {value!r}")
    return flat


def expand_sweep(config: dict[str, Any], sweep_file: Path) -> list[dict[str, Any]]:
    """One config per combination of the sweep file's values (nested keys or dotted ``a.b`` names).

    Each gets ``_run<i>`` appended to its identifier, as fairchem's sweeps do.
    """
    try:
        sweep = yaml.safe_load(Path(sweep_file).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SlurmError(f"--sweep-yml {sweep_file}: not a readable YAML file ({error})") from error
    if not isinstance(sweep, Mapping) or not sweep:
        raise SlurmError(f"--sweep-yml {sweep_file}: expected a mapping of keys to lists of values")
    flat = _flatten(sweep)
    configs = []
    for index, values in enumerate(itertools.product(*flat.values())):
        variant = copy.deepcopy(config)
        for name, value in zip(flat, values, strict=True):
            *parents, leaf = name.split(".")
            node = variant
            for parent in parents:
                node = node.setdefault(parent, {})
                if not isinstance(node, dict):
                    raise SlurmError(f"--sweep-yml {sweep_file}: '{name}' goes through a value that is not a section")
            node[leaf] = value
        variant["identifier"] = f"{variant.get('identifier') or 'run'}_run{index}"
        configs.append(variant)
    return configs


def cpu_job_config(config: dict[str, Any]) -> dict[str, Any]:
    """In a ``--submit --cpu`` job: environment and config for fairchem's local (non-SLURM) set-up over gloo."""
    environment = os.environ
    try:
        nodes = environment["SLURM_JOB_NODELIST"]
        rank, local_rank, tasks = environment["SLURM_PROCID"], environment["SLURM_LOCALID"], environment["SLURM_NTASKS"]
        job = int(environment["SLURM_JOB_ID"])  # unique per array task
    except KeyError as error:
        raise SlurmError(f"a --submit job without SLURM's variable {error}; is it running under SLURM?") from error
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True
    ).stdout.split()
    os.environ.update(MASTER_ADDR=hosts[0], MASTER_PORT=str(PORT_BASE + job % 20_000), RANK=rank, LOCAL_RANK=local_rank)
    return config | {"submit": False, "distributed_backend": "gloo", "world_size": int(tasks)}
