"""Training progress: a bar with ETA and loss terms on a terminal, periodic lines otherwise."""

from __future__ import annotations

import io
import logging

import pytest
from trainer_helpers import make_trainer, prepare_ethanol, tiny_config

from piwsl.progress import TrainingProgress

METRICS = {"loss": {"metric": 0.5}, "pitc_loss": {"metric": 0.012}, "energy_mae": {"metric": 3.0}}


def test_bar_shows_steps_and_loss_terms():
    stream = io.StringIO()
    progress = TrainingProgress(4, 0, stream=stream, bar=True)
    for step in range(1, 5):
        progress.update(step, METRICS)
    progress.close()
    text = stream.getvalue()
    assert "4/4" in text and "pitc_loss=0.012" in text and "loss=0.5" in text and "energy_mae" not in text


def test_without_a_terminal_it_logs_a_line_every_five_percent(caplog):
    progress = TrainingProgress(100, 0, stream=io.StringIO())
    with caplog.at_level(logging.INFO):
        for step in range(1, 101):
            progress.update(step, METRICS)
    lines = [record.message for record in caplog.records]
    assert len(lines) == 20 and lines[-1].startswith("step 100/100 (100%)") and "ETA 0:00" in lines[-1]
    assert "pitc_loss 0.012" in lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_ethanol(tmp_path_factory.mktemp("data"))


def test_training_reports_progress(data, tmp_path, caplog):
    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "piwsl"}))
    with caplog.at_level(logging.INFO):
        trainer.train(disable_eval_tqdm=True)
    lines = [record.message for record in caplog.records if record.message.startswith("step ")]
    assert lines[-1].startswith("step 8/8 (100%)") and "pisc_loss" in lines[-1]


def test_scale_factor_warnings_are_shown_once(caplog):
    import piwsl  # noqa: F401  (installs the filter)

    with caplog.at_level(logging.WARNING):
        for name in ("a", "b", "c"):
            logging.warning(f"Scale factor {name} is not fitted. Please make sure that you either (1) ...")
    notices = [record for record in caplog.records if "scale factors" in record.getMessage()]
    assert len(notices) <= 1 and not any("Scale factor b" in record.getMessage() for record in caplog.records)
