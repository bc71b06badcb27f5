#!/usr/bin/env python
"""Time one forward+backward pass and measure its memory, per backbone, model size and force mode.

Every backbone is built from its model config (``configs/models/{backbone}.yml`` for ``paper``,
``{backbone}_small.yml`` for ``small``) and run on the same fixed batch of real molecules (by
default the first frame of the bundled GFN2-xTB ethanol and aspirin sets: 9 + 21 atoms). One step
is what training does: outputs, a loss on energies and forces, ``backward()`` to the parameters
(through the forces too, which for gradient forces means a double backward).

Each measurement runs in a fresh process, so that the peak memory is its own: on CPU the rise of
the process's peak resident memory over what it held before the model was built; on a GPU the
peak allocated memory. Also reported: the bytes autograd saves for the backward pass (activation
memory, any device) and the median and minimum step time over ``--repeats`` timed steps after
``--warmup`` untimed ones.

Example: OMP_NUM_THREADS=1 python scripts/benchmark_backbones.py --sizes small,paper --repeats 3 \\
    --json results/benchmark_backbones.json
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import platform
import resource
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("schnet", "painn", "spinconv", "escn", "equiformer_v2")
#: Backbones without a force head: forces are always -dE/dr.
GRADIENT_ONLY = {"schnet"}
DEFAULT_DATA = (ROOT / "tests/data/rmd17_ethanol_gfn2xtb.npz", ROOT / "data/rmd17_aspirin_gfn2xtb_500K.npz")


@dataclass(frozen=True)
class Job:
    """One measurement: a backbone at one size and force mode on one device."""

    backbone: str
    size: str
    mode: str
    device: str
    data: tuple[str, ...]
    frames_per_file: int
    repeats: int
    warmup: int
    threads: int


class SavedTensorMeter:
    """Sums the bytes autograd saves for the backward pass while its hooks are active."""

    def __init__(self) -> None:
        self.bytes = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.bytes += tensor.numel() * tensor.element_size()
        return tensor

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backbones", default=",".join(BACKBONES), help=f"comma-separated subset of {', '.join(BACKBONES)}"
    )
    parser.add_argument(
        "--sizes",
        default="small",
        help="comma-separated: small (configs/models/*_small.yml) and/or paper (configs/models/*.yml; slow on CPU)",
    )
    parser.add_argument(
        "--modes",
        default="direct,gradient",
        help="comma-separated force modes: direct (force head) and/or gradient (-dE/dr); SchNet has gradient only",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement (median and min reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=list(DEFAULT_DATA),
        help="rMD17-format npz files (nuclear_charges, coords, energies, forces) whose first frames form the batch",
    )
    parser.add_argument("--frames-per-file", type=int, default=1, help="frames taken from each --data file")
    parser.add_argument(
        "--devices", default=None, help="comma-separated devices, e.g. cpu,cuda (default: cpu, plus cuda if present)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in each measurement")
    parser.add_argument(
        "--json", type=Path, default=Path("benchmark_backbones.json"), help="where the results are written"
    )
    return parser


def model_config(backbone: str, size: str) -> dict:
    """The ``model`` section of ``configs/models/{backbone}[_small].yml``."""
    from fairchem.core.common.utils import load_config

    name = backbone if size == "paper" else f"{backbone}_small"
    config, _, _ = load_config(ROOT / "configs/models" / f"{name}.yml")
    return dict(config["model"])


def make_batch(job: Job):
    from fairchem.core.datasets.lmdb_dataset import data_list_collater

    from piwsl.data.formats import read_rmd17

    structures = [s for path in job.data for s in read_rmd17(Path(path))[: job.frames_per_file]]
    batch = data_list_collater([s.to_data(i) for i, s in enumerate(structures)], otf_graph=True)
    return batch.to(job.device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def training_step(model: torch.nn.Module, batch) -> None:
    """Forward, a loss on energies and forces, backward to the parameters."""
    out = model(batch.clone())
    loss = out["energy"].pow(2).mean() + out["forces"].pow(2).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)


def measure(job: Job) -> dict:
    """Run one measurement (in its own process); a failure is reported, not raised."""
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(job.threads)
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import setup_imports

    import piwsl.models  # noqa: F401  (registers our models)

    setup_imports()
    result = asdict(job) | {"error": None}
    try:
        batch = make_batch(job)
        result.update(structures=int(batch.natoms.numel()), atoms=int(batch.natoms.sum()))
        arguments = model_config(job.backbone, job.size)
        if job.backbone not in GRADIENT_ONLY:
            arguments["direct_forces"] = job.mode == "direct"
        name = arguments.pop("name")
        cuda = job.device.startswith("cuda")
        baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        torch.manual_seed(0)
        model = registry.get_model_class(name)(**arguments).to(job.device).train()
        result["parameters"] = sum(p.numel() for p in model.parameters())
        for _ in range(job.warmup):
            training_step(model, batch)
        if cuda:
            torch.cuda.reset_peak_memory_stats(job.device)
        times = []
        for _ in range(job.repeats):
            synchronize(job.device)
            start = time.perf_counter()
            training_step(model, batch)
            synchronize(job.device)
            times.append(time.perf_counter() - start)
        meter = SavedTensorMeter()
        with meter.hooks():
            training_step(model, batch)
        result.update(
            median_ms=1e3 * statistics.median(times),
            min_ms=1e3 * min(times),
            saved_activations_mb=meter.bytes / 2**20,
            peak_memory_mb=(
                torch.cuda.max_memory_allocated(job.device) / 2**20
                if cuda
                else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 2**10
            ),
            peak_memory_kind="GPU peak allocated" if cuda else "CPU peak RSS rise",
        )
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
    return result


def jobs_from(args: argparse.Namespace) -> list[Job]:
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    data = tuple(str(path) for path in args.data)
    per_job = (args.frames_per_file, args.repeats, args.warmup, args.threads)
    jobs = []
    for device in devices:
        for backbone in args.backbones.split(","):
            if backbone not in BACKBONES:
                raise SystemExit(f"error: unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
            for size in args.sizes.split(","):
                if size not in ("small", "paper"):
                    raise SystemExit(f"error: unknown size {size!r}; choose small and/or paper")
                for mode in args.modes.split(","):
                    if mode not in ("direct", "gradient"):
                        raise SystemExit(f"error: unknown force mode {mode!r}; choose direct and/or gradient")
                    if mode == "direct" and backbone in GRADIENT_ONLY:
                        continue
                    jobs.append(Job(backbone, size, mode, device, data, *per_job))
    return jobs


def format_table(results: list[dict]) -> str:
    header = (
        f"{'device':6s} {'backbone':14s} {'size':5s} {'forces':8s} {'params':>10s} {'atoms':>5s} "
        f"{'median ms':>10s} {'min ms':>9s} {'peak MB':>9s} {'saved MB':>9s}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        start = f"{r['device']:6s} {r['backbone']:14s} {r['size']:5s} {r['mode']:8s}"
        if r["error"] is not None:
            lines.append(f"{start} failed: {r['error']}")
            continue
        lines.append(
            f"{start} {r['parameters']:10,d} {r['atoms']:5d} {r['median_ms']:10.1f} {r['min_ms']:9.1f} "
            f"{r['peak_memory_mb']:9.1f} {r['saved_activations_mb']:9.1f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    jobs = jobs_from(args)
    context = multiprocessing.get_context("spawn")
    results = []
    # One fresh process per measurement: peak memory is per measurement, not the run's maximum.
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for result in pool.map(measure, jobs):
            results.append(result)
            print(f"done: {result['device']} {result['backbone']} {result['size']} {result['mode']}", flush=True)
    print(format_table(results))
    cpu_note = "peak MB: CPU peak resident memory rise (process-wide); saved MB: tensors autograd kept for backward"
    report = {
        "command": " ".join(sys.argv),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": args.threads,
        "notes": cpu_note,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    results = run(args)
    return 1 if any(result["error"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
