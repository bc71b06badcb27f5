"""Training progress: a tqdm bar with ETA and the current loss terms, or periodic lines without a terminal."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

from tqdm import tqdm

#: Without a terminal, a progress line every this fraction of the run.
LINE_FRACTION = 0.05


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def loss_terms(metrics: dict[str, Any]) -> dict[str, float]:
    """The loss terms among fairchem's running metrics (``loss``, ``supervised_loss``, ``pitc_loss``...)."""
    return {name: float(value["metric"]) for name, value in metrics.items() if name.endswith("loss")}


class TrainingProgress:
    """Progress of ``total`` steps from ``initial``: a bar on a terminal, else a log line every 5 % of the run.

    ``stream`` (default: standard error) decides: a bar when it is a terminal or ``bar`` is forced.
    """

    def __init__(
        self, total: int, initial: int = 0, enabled: bool = True, stream: IO[str] | None = None, bar: bool | None = None
    ) -> None:
        self.total, self.initial = total, initial
        self.enabled = enabled and total > initial
        stream = stream or sys.stderr
        self.bar = (
            tqdm(total=total, initial=initial, unit="step", desc="train", file=stream, dynamic_ncols=True)
            if self.enabled and (bar if bar is not None else stream.isatty())
            else None
        )
        self.started = time.monotonic()
        self.line_every = max(1, round(LINE_FRACTION * total))

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """Step ``step`` is complete; ``metrics`` are fairchem's running metrics."""
        if not self.enabled:
            return
        terms = loss_terms(metrics)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({name: f"{value:.3g}" for name, value in terms.items()}, refresh=False)
            return
        if step % self.line_every and step != self.total:
            return
        elapsed = time.monotonic() - self.started
        done = step - self.initial
        remaining = elapsed / done * (self.total - step) if done > 0 else float("nan")
        shown = ", ".join(f"{name} {value:.3g}" for name, value in terms.items())
        logging.info(
            f"step {step}/{self.total} ({100 * step / self.total:.0f}%), {_duration(elapsed)} elapsed, "
            f"ETA {_duration(remaining) if remaining == remaining else '?'}; {shown}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
