"""Figures: parity plots with an error histogram (``evaluate.py --plot``) and learning curves.

matplotlib runs with its file-only Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from piwsl.evaluate import Predictions


def _parity(axis, label: np.ndarray, prediction: np.ndarray, title: str, unit: str) -> None:
    low, high = float(min(label.min(), prediction.min())), float(max(label.max(), prediction.max()))
    axis.plot([low, high], [low, high], color="0.6", linewidth=1)
    axis.scatter(label, prediction, s=4, alpha=0.5, linewidths=0)
    rmse = float(np.sqrt(np.mean((prediction - label) ** 2)))
    axis.set(xlabel=f"reference ({unit})", ylabel=f"predicted ({unit})", title=f"{title}: RMSE {rmse:.3g}")
    axis.set_aspect("equal", adjustable="datalim")


def plot_parity(predictions: Predictions, path: Path, title: str = "") -> Path:
    """Energy parity, force-component parity and a histogram of both errors, side by side, as one PNG."""
    unit = predictions.energy_unit
    has_forces = predictions.forces is not None and predictions.forces_label is not None
    figure, axes = plt.subplots(1, 3 if has_forces else 2, figsize=(13 if has_forces else 9, 4.2))
    _parity(axes[0], predictions.energy_label, predictions.energy, "energy per structure", unit)
    histogram = axes[-1]
    energy_error = predictions.energy - predictions.energy_label
    histogram.hist(energy_error, bins=40, alpha=0.6, label=f"energy ({unit})", density=True)
    if has_forces:
        _parity(axes[1], predictions.forces_label.ravel(), predictions.forces.ravel(), "force components", f"{unit}/Å")
        force_error = (predictions.forces - predictions.forces_label).ravel()
        histogram.hist(force_error, bins=80, alpha=0.6, label=f"force ({unit}/Å)", density=True)
    histogram.set(xlabel="prediction − reference", ylabel="density", title="errors")
    histogram.legend()
    return _save(plt, figure, path, title, dpi=90)


def read_scalars(logs_dir: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every scalar of a run's tensorboard logs: term -> split ('train', 'val') -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for tag in events.Tags()["scalars"]:
        split, _, term = tag.partition("/")
        if not term or term in ("epoch", "step"):
            continue
        scalars = events.Scalars(tag)
        steps = np.array([event.step for event in scalars])
        values = np.array([event.value for event in scalars])
        curves.setdefault(term, {})[split] = (steps, values)
    return curves


def plot_learning_curves(logs_dir: Path, path: Path, title: str = "") -> Path:
    """One panel per logged term (losses, metrics, learning rate), train and validation together, as a PNG."""
    curves = read_scalars(Path(logs_dir))
    if not curves:
        raise FileNotFoundError(f"{logs_dir}: no tensorboard scalars (is it a run's logs directory?)")
    names = sorted(curves)
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for axis, name in zip(axes.ravel(), names, strict=False):
        for split, (steps, values) in sorted(curves[name].items()):
            axis.plot(steps, values, label=split, marker="o" if len(steps) < 20 else None, markersize=3)
        positive = all((values > 0).all() for _, values in curves[name].values())
        if positive and name != "lr":
            axis.set_yscale("log")
        axis.set(title=name, xlabel="step")
        axis.legend(fontsize="small")
    for axis in axes.ravel()[len(names) :]:
        axis.set_visible(False)
    return _save(plt, figure, path, title, dpi=80)


def find_logs_dir(path: Path) -> Path:
    """The tensorboard logs directory of a run: ``path`` itself, or the only one below it (a run directory)."""
    path = Path(path)
    directories = sorted({event.parent for event in path.rglob("events.out.tfevents.*")})
    if not directories:
        raise FileNotFoundError(f"{path}: no tensorboard logs (events.out.tfevents.*) in or below it")
    if len(directories) > 1:
        listed = ", ".join(str(directory) for directory in directories[:5])
        raise FileNotFoundError(f"{path} holds the logs of {len(directories)} runs ({listed}...); name one of them")
    return directories[0]


def _save(plt, figure, path: str | Path, title: str | None, dpi: int) -> Path:
    """Title, lay out and write ``figure`` to ``path`` (parents created), close it; return the path."""
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
