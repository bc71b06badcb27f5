"""``optim.max_steps`` trains exactly that many steps; every run that trained ends with a best checkpoint."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import make_trainer, prepare_ethanol, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_ethanol(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("max_steps", [3, 6])
def test_max_steps_is_exact_and_a_short_run_ends_with_a_best_checkpoint(data, tmp_path, max_steps):
    config = tiny_config(data, tmp_path, {"method": "piwsl"})  # 16 structures, batch 4: 4 steps per epoch
    config["optim"].pop("max_epochs")
    config["optim"].update({"max_steps": max_steps, "eval_every": 4})
    trainer = make_trainer(config)
    trainer.train(disable_eval_tqdm=True)
    assert trainer.step == max_steps
    directory = tmp_path / "checkpoints/test"
    assert torch.load(directory / "checkpoint.pt", weights_only=False)["step"] == max_steps
    assert (directory / "best_checkpoint.pt").is_file()  # validated at step 4 (if reached) and at the last step


def test_rerunning_a_finished_run_validates_nothing_more(data, tmp_path):
    config = tiny_config(data, tmp_path, {"method": "baseline"})
    config["optim"].pop("max_epochs")
    config["optim"].update({"max_steps": 3, "eval_every": 4})
    make_trainer(config).train(disable_eval_tqdm=True)
    best = tmp_path / "checkpoints/test/best_checkpoint.pt"
    written = best.stat().st_mtime_ns
    resumed = make_trainer(config)
    resumed.load_checkpoint(str(tmp_path / "checkpoints/test/checkpoint.pt"))
    resumed.train(disable_eval_tqdm=True)
    assert resumed.step == 3 and best.stat().st_mtime_ns == written


def test_main_draws_the_learning_curves_at_the_end_of_training(data, tmp_path):
    import yaml

    from piwsl.cli import main

    config = tiny_config(data, tmp_path, {"method": "piwsl"})
    config["optim"].pop("max_epochs")
    config["optim"].update({"max_steps": 2, "eval_every": 2})
    config = {k: v for k, v in config.items() if k not in ("run_dir", "cpu", "timestamp_id")}
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config))
    assert (
        main(["--mode", "train", "--config", str(tmp_path / "c.yml"), "--cpu", "--run-dir", str(tmp_path / "r")]) == 0
    )
    (curves,) = (tmp_path / "r").rglob("learning_curves.png")
    assert curves.stat().st_size > 10_000
