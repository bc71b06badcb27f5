"""Early stopping, the wall-clock budget and their record survive resumption (``piwsl.convergence``)."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import make_trainer, prepare_ethanol, tiny_config

from piwsl.config import PIWSLConfigError
from piwsl.convergence import (
    CONVERGENCE_KEY,
    ENERGY_FORCE_METRIC,
    ConvergenceMonitor,
    ConvergenceState,
    EarlyStopping,
    StoppingRules,
    add_energy_force_metric,
    cosine_schedule_defaults,
    label_spread,
)


# ------------------------------------------------------------------ pure logic
def test_early_stopping_counts_validations_without_a_relative_improvement():
    monitor = ConvergenceMonitor(StoppingRules(EarlyStopping(patience=2, min_delta=0.1)))
    monitor.observe(10, 1.0)  # best
    monitor.observe(20, 0.95)  # better, but by less than 10 %: no improvement
    assert monitor.state.best == 1.0 and monitor.state.since_improvement == 1
    monitor.observe(30, 0.85)  # 15 % better: improvement, count reset
    assert (monitor.state.best, monitor.state.best_step, monitor.state.since_improvement) == (0.85, 30, 0)
    monitor.observe(40, 0.9)
    assert monitor.state.stopped_by is None
    monitor.observe(50, 0.8)  # 6 % better only: second validation without improvement
    assert (monitor.state.stopped_by, monitor.state.stopped_at_step) == ("early_stopping", 50)
    assert monitor.stop_at_boundary(50)


def test_higher_is_better_metrics_improve_upwards():
    monitor = ConvergenceMonitor(StoppingRules(EarlyStopping(patience=1)), lower_is_better=False)
    monitor.observe(1, 0.5)
    monitor.observe(2, 0.6)
    assert monitor.state.best == 0.6 and monitor.state.stopped_by is None
    monitor.observe(3, 0.55)
    assert monitor.state.stopped_by == "early_stopping"


def test_wall_clock_budget_sums_attempts_and_the_first_reason_stays():
    now = [0.0]
    monitor = ConvergenceMonitor(StoppingRules(max_wall_seconds=10.0), clock=lambda: now[0])
    monitor.start()
    now[0] = 6.0
    assert not monitor.stop_at_boundary(3)
    saved = monitor.snapshot()
    assert saved["training_s"] == 6.0
    resumed = ConvergenceMonitor(StoppingRules(max_wall_seconds=10.0), clock=lambda: now[0])
    resumed.restore(saved)
    now[0] = 100.0
    resumed.start()
    now[0] = 103.0
    assert not resumed.stop_at_boundary(5)  # 6 + 3 s
    now[0] = 104.5
    assert resumed.stop_at_boundary(6)  # 6 + 4.5 s
    resumed.stop("early_stopping", 7)
    assert (resumed.state.stopped_by, resumed.state.stopped_at_step) == ("wall_clock", 6)


@pytest.mark.parametrize(
    ("optim", "message"),
    [
        ({"early_stopping": {"patience": 0}}, "optim.early_stopping.patience = 0"),
        ({"early_stopping": {"patience": 3, "min_delta": 1.5}}, "optim.early_stopping.min_delta = 1.5"),
        ({"early_stopping": {"patients": 3}}, "unknown key 'optim.early_stopping.patients'"),
        ({"early_stopping": 5}, "optim.early_stopping = 5"),
        ({"max_wall_seconds": -1}, "optim.max_wall_seconds = -1"),
    ],
)
def test_bad_stopping_settings_are_one_line_errors(optim, message):
    with pytest.raises(PIWSLConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        StoppingRules.from_optim(optim)


def test_energy_force_metric_divides_each_mae_by_the_label_spread():
    class Record:
        def __init__(self, energy, forces):
            self.energy, self.forces = torch.tensor(energy), torch.tensor(forces)

    records = [Record(1.0, [[3.0, 0.0, 0.0]]), Record(3.0, [[0.0, -3.0, 0.0]])]
    energy_std, force_rms = label_spread(records)
    assert energy_std == pytest.approx(1.0) and force_rms == pytest.approx(3.0 / 3**0.5)
    metrics = {"energy_mae": {"metric": 0.5}, "forces_mae": {"metric": 0.3}}
    assert add_energy_force_metric(metrics, energy_std, force_rms)
    assert metrics[ENERGY_FORCE_METRIC]["metric"] == pytest.approx(0.5 + 0.3 / force_rms)
    assert not add_energy_force_metric({"energy_mae": {"metric": 0.5}}, energy_std, force_rms)


def test_cosine_schedule_anneals_over_max_steps_unless_told_otherwise():
    optim = {"scheduler": "CosineAnnealingLR", "max_steps": 500}
    cosine_schedule_defaults(optim)
    assert optim["T_max"] == 500
    optim = {"scheduler": "CosineAnnealingLR", "max_steps": 500, "T_max": 100}
    cosine_schedule_defaults(optim)
    assert optim["T_max"] == 100
    optim = {"scheduler": "ReduceLROnPlateau", "max_steps": 500}
    cosine_schedule_defaults(optim)
    assert "T_max" not in optim


# ------------------------------------------------------------------ in the trainer
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_ethanol(tmp_path_factory.mktemp("data"))


def _config(data, tmp_path, **optim):
    config = tiny_config(data, tmp_path, {"method": "baseline"})  # 16 structures, batch 4: 4 steps per epoch
    config["optim"].pop("max_epochs")
    config["optim"].update({"max_steps": 40, "eval_every": 2, "checkpoint_every": 2} | optim)
    return config


def _state(path) -> ConvergenceState:
    return ConvergenceState.from_dict(torch.load(path, weights_only=False)["config"][CONVERGENCE_KEY])


# Relative min_delta 0.99: after the first validation nothing counts as an improvement.
NO_IMPROVEMENT = {"early_stopping": {"patience": 2, "min_delta": 0.99}}


def test_early_stopping_ends_training_with_a_best_checkpoint_and_records_why(data, tmp_path):
    trainer = make_trainer(_config(data, tmp_path, **NO_IMPROVEMENT))
    validations = {}
    update_best = trainer.update_best

    def record(primary_metric, val_metrics, **kwargs):
        validations[trainer.step] = val_metrics[primary_metric]["metric"]
        update_best(primary_metric, val_metrics, **kwargs)

    trainer.update_best = record
    trainer.train(disable_eval_tqdm=True)
    assert trainer.step == 6  # validations at 2 (best), 4 and 6 (no improvement): stop
    directory = tmp_path / "checkpoints/test"
    state = _state(directory / "checkpoint.pt")
    assert (state.stopped_by, state.stopped_at_step, state.best_step, state.evaluations) == ("early_stopping", 6, 2, 3)
    assert state.training_s > 0
    assert torch.load(directory / "checkpoint.pt", weights_only=False)["step"] == 6
    # early stopping counts only improvements beyond min_delta; the best checkpoint takes any
    assert state.best_checkpoint_step == _state(directory / "best_checkpoint.pt").best_checkpoint_step
    assert state.best_checkpoint_step == min(validations, key=lambda step: (validations[step], step))


def _train_until_sigterm_after_validating(config, step: int) -> None:
    """Train as if SIGTERM arrived during the validation of ``step``: the trainer saves at that boundary and exits."""
    trainer = make_trainer(config)
    update_best = trainer.update_best

    def update_then_stop(*args, **kwargs):
        update_best(*args, **kwargs)
        if trainer.step == step:
            trainer._stop_signal = 15

    trainer.update_best = update_then_stop
    try:
        trainer.train(disable_eval_tqdm=True)
    except SystemExit as stop:
        assert stop.code == 128 + 15
    else:
        raise AssertionError("training was not stopped")


def test_a_resumed_run_keeps_its_patience_count_and_training_time(data, tmp_path):
    _train_until_sigterm_after_validating(_config(data, tmp_path, **NO_IMPROVEMENT), step=4)
    checkpoint = tmp_path / "checkpoints/test/checkpoint.pt"
    interrupted = _state(checkpoint)
    assert (interrupted.evaluations, interrupted.since_improvement, interrupted.stopped_by) == (2, 1, None)
    resumed = make_trainer(_config(data, tmp_path, **NO_IMPROVEMENT))
    resumed.load_checkpoint(str(checkpoint))
    resumed.train(disable_eval_tqdm=True)
    assert resumed.step == 6  # as without the interruption: one more validation without improvement
    final = _state(checkpoint)
    assert (final.stopped_by, final.stopped_at_step, final.evaluations, final.best_step) == ("early_stopping", 6, 3, 2)
    assert final.training_s > interrupted.training_s


def test_a_stopped_run_trains_no_more_when_rerun(data, tmp_path):
    make_trainer(_config(data, tmp_path, **NO_IMPROVEMENT)).train(disable_eval_tqdm=True)
    checkpoint = tmp_path / "checkpoints/test/checkpoint.pt"
    rerun = make_trainer(_config(data, tmp_path, **NO_IMPROVEMENT))
    rerun.load_checkpoint(str(checkpoint))
    rerun.train(disable_eval_tqdm=True)
    assert rerun.step == 6 and _state(checkpoint).stopped_by == "early_stopping"


def test_wall_clock_budget_ends_training_and_validates_the_last_step(data, tmp_path):
    trainer = make_trainer(_config(data, tmp_path, max_wall_seconds=35.0))
    trainer._convergence._clock = lambda: 10.0 * trainer.step  # 10 s per step
    trainer.train(disable_eval_tqdm=True)
    assert trainer.step == 3  # at the boundary after step 3 the clock reads 40 s
    state = _state(tmp_path / "checkpoints/test/checkpoint.pt")
    assert (state.stopped_by, state.stopped_at_step) == ("wall_clock", 3)
    assert state.evaluations == 2  # step 2, and the last step 3


def test_max_steps_is_recorded_as_the_reason_and_selection_can_use_energy_and_forces(data, tmp_path):
    config = _config(data, tmp_path, max_steps=4)
    config["evaluation_metrics"]["primary_metric"] = ENERGY_FORCE_METRIC
    trainer = make_trainer(config)
    trainer.train(disable_eval_tqdm=True)
    directory = tmp_path / "checkpoints/test"
    assert _state(directory / "checkpoint.pt").stopped_by == "max_steps"
    best = torch.load(directory / "best_checkpoint.pt", weights_only=False)
    metrics = best["val_metrics"]
    assert ENERGY_FORCE_METRIC in metrics and metrics[ENERGY_FORCE_METRIC]["metric"] > 0
    assert best["config"][CONVERGENCE_KEY]["best"] == pytest.approx(metrics[ENERGY_FORCE_METRIC]["metric"])


def test_an_unknown_primary_metric_is_named_at_the_first_validation(data, tmp_path):
    config = _config(data, tmp_path, max_steps=2)
    config["evaluation_metrics"]["primary_metric"] = "energy_forces_mae"
    with pytest.raises(PIWSLConfigError, match="primary_metric = 'energy_forces_mae' is not a validation metric"):
        make_trainer(config).train(disable_eval_tqdm=True)


def test_two_ddp_ranks_stop_together_on_the_wall_clock_budget(data, tmp_path):
    import os
    import subprocess
    import sys

    import yaml
    from trainer_helpers import ROOT

    config = _config(data, tmp_path, max_wall_seconds=0.001)  # used up after the first step
    config = {k: v for k, v in config.items() if k not in ("run_dir", "identifier", "timestamp_id", "seed", "cpu")}
    (tmp_path / "ddp.yml").write_text(yaml.safe_dump(config))
    command = [
        sys.executable, str(ROOT / "main.py"), "--mode", "train", "--config", str(tmp_path / "ddp.yml"), "--cpu",
        "--num-gpus", "2", "--run-dir", str(tmp_path / "run"), "--identifier", "ddp", "--timestamp-id", "ddp",
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = _state(tmp_path / "run/checkpoints/ddp/checkpoint.pt")
    assert (state.stopped_by, state.stopped_at_step) == ("wall_clock", 1)
