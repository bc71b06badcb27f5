#!/usr/bin/env python
"""Time training steps: supervised only vs PIWSL sequential vs PIWSL batched, on the same real batches.

All variants run in one process and are timed round-robin (one step of each in turn), so that a
noisy machine slows them alike; the ratios PIWSL/baseline and batched/sequential are medians over
``--steps`` timed steps after ``--warmup`` untimed ones. A step is the body of fairchem's training
loop (forward, loss, training metrics, backward, optimizer step); loading batches, validation and
checkpoints are left out, as they cost the same with or without PIWSL. Memory: the bytes autograd saves for the
backward pass (activations) per step on CPU, and the peak allocated memory on a GPU.

Example: python scripts/benchmark_step.py --model painn_small --batch-size 8 --steps 30 --json step.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from fairchem.core.common.utils import load_config

from piwsl.cpu_memory import tune_malloc_for_tensors
from piwsl.jsonfiles import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "supervised": {"method": "baseline"},
    "piwsl_sequential": {"method": "piwsl", "forward_mode": "sequential"},
    "piwsl_batched": {"method": "piwsl", "forward_mode": "batched"},
}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="painn_small", help="model config name under configs/models/ (no .yml)")
    parser.add_argument(
        "--force-mode", choices=["direct", "gradient"], default=None, help="force head (default: the config's)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="structures per training batch")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant before timing")
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data/rmd17_aspirin_gfn2xtb_500K.npz",
        help="npz with the real molecules to batch (default: bundled GFN2-xTB aspirin, rMD17 layout)",
    )
    parser.add_argument(
        "--format", choices=["rmd17", "sgdml"], default="rmd17", help="layout of --data: rmd17 or sgdml (MD17/MD22)"
    )
    parser.add_argument(
        "--devices", default=None, help="comma-separated devices, e.g. cpu,cuda (default: cpu, plus cuda if present)"
    )
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default malloc settings (main.py tunes them for CPU runs; see piwsl.cpu_memory)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's, i.e. OMP_NUM_THREADS)"
    )
    parser.add_argument("--piwsl", default="{}", help="extra piwsl settings for the PIWSL variants, as YAML/JSON")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="K",
        help="also profile K steps of each variant with torch.profiler and report its top operators "
        "(self time, calls, time per call): where the time goes, and how it changes in the stacked batch",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return parser


def make_config(args: argparse.Namespace, data_dir: Path, run_dir: Path, section: dict) -> dict:
    config, _, _ = load_config(ROOT / "configs/demo/aspirin_painn_baseline.yml")
    model_config, _, _ = load_config(ROOT / f"configs/models/{args.model}.yml")
    config = copy.deepcopy(config)
    config["model"] = model_config["model"]
    config["optim"].update({k: v for k, v in model_config.get("optim", {}).items()})
    if args.force_mode is not None and "direct_forces" in config["model"]:
        config["model"]["direct_forces"] = args.force_mode == "direct"
    elif args.force_mode == "direct":
        raise SystemExit(f"error: {args.model} has gradient forces only (no direct_forces setting)")
    config["piwsl"] = section
    config["dataset"]["train"]["src"] = str(data_dir / "train")
    config["dataset"]["val"]["src"] = str(data_dir / "val")
    config["optim"].update({"batch_size": args.batch_size, "max_epochs": 1, "ema_decay": None})
    config.update({"run_dir": str(run_dir), "identifier": "bench", "timestamp_id": "bench", "seed": 0})
    return config


def config_force_mode(model: str) -> str:
    """``direct`` or ``gradient``: the force mode of ``configs/models/<model>.yml`` as written."""
    model_config, _, _ = load_config(ROOT / f"configs/models/{model}.yml")
    return "direct" if model_config["model"].get("direct_forces", False) else "gradient"


class SavedTensorMeter:
    """Sums the bytes autograd saves for backward while active (activation memory of a step)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def training_step(trainer, batch, meter: SavedTensorMeter | None = None) -> None:
    """The body of fairchem's training loop: forward, loss, training metrics, backward and optimizer step."""
    trainer.model.train()
    trainer.step += 1
    with meter.hooks() if meter is not None else contextlib.nullcontext():
        out = trainer._forward(batch)
        loss = trainer._compute_loss(out, batch)
    trainer.metrics = trainer._compute_metrics(out, batch, trainer.evaluator, trainer.metrics)
    trainer.metrics = trainer.evaluator.update("loss", loss.item(), trainer.metrics)
    trainer._backward(loss)


def profile_steps(trainer, batches: list, steps: int, device: str, top: int = 12) -> list[dict]:
    """The ``top`` operators of ``steps`` training steps by self time (device time on GPUs), per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([] if device == "cpu" else [ProfilerActivity.CUDA])
    with profile(activities=activities) as profiler:
        for step in range(steps):
            training_step(trainer, batches[step % len(batches)])
        synchronize(device)
    key = "self_cpu_time_total" if device == "cpu" else "self_device_time_total"
    events = sorted(profiler.key_averages(), key=lambda event: getattr(event, key), reverse=True)[:top]
    return [
        {
            "operator": event.key,
            "self_ms_per_step": getattr(event, key) / 1000 / steps,
            "calls_per_step": event.count / steps,
            "us_per_call": getattr(event, key) / max(event.count, 1),
        }
        for event in events
    ]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def benchmark_device(args: argparse.Namespace, device: str, data_dir: Path, work: Path) -> dict:
    from piwsl.cli import build_trainer

    cpu = device == "cpu"
    extra = yaml.safe_load(args.piwsl) or {}
    trainers = {}
    for name, section in VARIANTS.items():
        section = section | (extra if section["method"] == "piwsl" else {})
        copy_of_data = work / f"{device}-{name}" / "data"  # LMDB allows one open environment per process
        shutil.copytree(data_dir, copy_of_data)
        trainers[name] = build_trainer(make_config(args, copy_of_data, work / f"{device}-{name}", section), cpu=cpu)
    batches = [batch.to(trainers["supervised"].device) for batch in trainers["supervised"].train_loader]
    times = {name: [] for name in trainers}
    for step in range(args.warmup + args.steps):
        batch = batches[step % len(batches)]
        for name, trainer in trainers.items():
            synchronize(device)
            start = time.perf_counter()
            training_step(trainer, batch)
            synchronize(device)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    result = {"device": device, "variants": {}}
    for name, trainer in trainers.items():
        meter = SavedTensorMeter()
        if not cpu:
            torch.cuda.reset_peak_memory_stats()
        training_step(trainer, batches[0], meter)
        result["variants"][name] = {
            "median_step_s": statistics.median(times[name]),
            "saved_activations_mb": meter.bytes / 2**20,
            "peak_gpu_mb": None if cpu else torch.cuda.max_memory_allocated() / 2**20,
        }
        if args.profile > 0:
            result["variants"][name]["profile"] = profile_steps(trainer, batches, args.profile, device)
    variants = result["variants"]
    baseline = variants["supervised"]["median_step_s"]
    result["ratios"] = {
        "piwsl_batched/supervised": variants["piwsl_batched"]["median_step_s"] / baseline,
        "piwsl_sequential/supervised": variants["piwsl_sequential"]["median_step_s"] / baseline,
        "batched/sequential": variants["piwsl_batched"]["median_step_s"]
        / variants["piwsl_sequential"]["median_step_s"],
    }
    return result


def run(args: argparse.Namespace) -> dict:
    from piwsl.data.formats import open_source
    from piwsl.data.prepare import prepare_dataset

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    malloc_tuned = not args.no_malloc_tuning and tune_malloc_for_tensors()
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = open_source(args.format, args.data)
        count = min(args.batch_size * 4, source.count() - 4)
        structures = [structure for _, structure in itertools.islice(source.records(), count + 4)]
        prepare_dataset(structures, work / "data", count, 2, 2, 0, args.data, args.format)
        results = [benchmark_device(args, device, work / "data", work) for device in devices]
    summary = {
        "model": args.model,
        "force_mode": args.force_mode or config_force_mode(args.model),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "piwsl_settings": yaml.safe_load(args.piwsl) or {},
        "data_format": args.format,
        "data": str(args.data.resolve().relative_to(ROOT))
        if args.data.resolve().is_relative_to(ROOT)
        else str(args.data),
        "results": results,
    }
    print(
        f"model {args.model}, forces {summary['force_mode']}, batch {args.batch_size}, {args.steps} steps, "
        f"{summary['threads']} thread(s), malloc tuned: {malloc_tuned}"
    )
    print(f"{'device':8s} {'variant':18s} {'median step (ms)':>17s} {'activations (MB)':>17s} {'peak GPU (MB)':>14s}")
    for result in results:
        for name, variant in result["variants"].items():
            gpu = "-" if variant["peak_gpu_mb"] is None else f"{variant['peak_gpu_mb']:.0f}"
            print(
                f"{result['device']:8s} {name:18s} {1000 * variant['median_step_s']:17.1f} "
                f"{variant['saved_activations_mb']:17.1f} {gpu:>14s}"
            )
        ratios = ", ".join(f"{k} = {v:.2f}" for k, v in result["ratios"].items())
        print(f"{result['device']:8s} ratios: {ratios}")
        for name, variant in result["variants"].items():
            if "profile" in variant:
                print(f"{result['device']} {name}: top operators (self ms per step, calls per step, us per call)")
                for row in variant["profile"][:8]:
                    print(
                        f"  {row['operator'][:48]:48s} {row['self_ms_per_step']:8.2f} {row['calls_per_step']:7.0f} "
                        f"{row['us_per_call']:9.1f}"
                    )
    if args.json is not None:
        write_json_atomic(args.json, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    run(get_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
