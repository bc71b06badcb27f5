"""Fine-tuning from a checkpoint: weights loaded (EMA or raw), fresh optimizer, freezing, mismatch errors, resume."""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import pytest
import torch
import yaml
from trainer_helpers import make_trainer, prepare_ethanol, tiny_config

from piwsl.cli import main
from piwsl.config import PIWSLConfigError
from piwsl.finetune import FinetuneConfig, FinetuneError, shift_energy_to_labels
from piwsl.training_data import TRAINING_DATA_KEY


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny PaiNN trained one epoch on ethanol (GFN2-xTB); its checkpoint and the data."""
    directory = tmp_path_factory.mktemp("pretrain")
    data = prepare_ethanol(directory)
    config = tiny_config(data, directory, {"method": "baseline"})
    config["optim"]["max_epochs"] = 1
    trainer = make_trainer(config)
    trainer.train(disable_eval_tqdm=True)
    checkpoint = Path(trainer.save(checkpoint_file="best_checkpoint.pt", training_state=False))  # EMA weights
    trainer.save(checkpoint_file="checkpoint.pt", training_state=True)  # raw weights and the EMA's
    del trainer
    return checkpoint, data


def finetune_config(data: Path, run_dir: Path, checkpoint: Path, **section) -> dict:
    config = tiny_config(data, run_dir, {"method": "piwsl"})
    config["optim"]["finetune"] = {"checkpoint": str(checkpoint)} | section
    return config


def stripped(state: dict) -> dict:
    return {key.removeprefix("module."): value for key, value in state.items()}


@pytest.mark.parametrize("weights", ["raw", "ema"])
def test_the_model_starts_from_the_checkpoint_with_a_fresh_optimizer(pretrained, tmp_path, weights):
    checkpoint, data = pretrained
    checkpoint = checkpoint.parent / "checkpoint.pt"  # a training checkpoint: raw weights and their average
    saved = torch.load(checkpoint, weights_only=False)
    trainer = make_trainer(finetune_config(data, tmp_path, checkpoint, weights=weights))
    model = trainer._unwrapped_model
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]  # what EMA averages
    if weights == "raw":
        expected = [stripped(saved["state_dict"])[name] for name, _ in trainable]
    else:
        expected = saved["ema"]["shadow_params"]
    loaded = [parameter.detach() for _, parameter in trainable]
    assert all(torch.equal(a, b) for a, b in zip(loaded, expected, strict=True))
    assert trainer.step == 0 and len(trainer.optimizer.state) == 0
    assert all(torch.equal(a, b) for a, b in zip(trainer.ema.shadow_params, loaded, strict=True))  # EMA restarted
    raw = stripped(saved["state_dict"])
    if weights == "ema":  # the average differs from the raw weights after an epoch of training
        assert any(not torch.equal(raw[name], p) for name, p in model.named_parameters())


def test_frozen_parameters_stay_as_loaded(pretrained, tmp_path):
    checkpoint, data = pretrained
    first_module = next(iter(stripped(torch.load(checkpoint, weights_only=False)["state_dict"]))).split(".")[0]
    trainer = make_trainer(finetune_config(data, tmp_path, checkpoint, freeze=[f"{first_module}.*"]))
    before = {name: p.detach().clone() for name, p in trainer._unwrapped_model.named_parameters()}
    trainer.train(disable_eval_tqdm=True)
    after = dict(trainer._unwrapped_model.named_parameters())
    frozen = [name for name in before if name.startswith(f"{first_module}.")]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    assert any(not torch.equal(before[name], after[name]) for name in before if name not in frozen)
    with pytest.raises(FinetuneError, match="matches no parameter"):
        make_trainer(finetune_config(prepare_ethanol(tmp_path / "bad"), tmp_path / "bad", checkpoint, freeze=["x.*"]))


def altered_checkpoint(checkpoint: Path, out: Path, change) -> Path:
    saved = torch.load(checkpoint, weights_only=False)
    change(saved)
    torch.save(saved, out)
    return out


def test_other_sizes_units_and_new_elements_are_named(pretrained, tmp_path):
    """Each case on its own copy of the data: a trainer that failed half-built keeps its LMDBs open."""
    checkpoint, _ = pretrained

    def data_for(case: str) -> Path:
        return prepare_ethanol(tmp_path / case)

    config = finetune_config(data_for("size"), tmp_path / "size", checkpoint)
    config["model"] = config["model"] | {"hidden_channels": 16}
    with pytest.raises(FinetuneError, match="does not fit.*model.hidden_channels: 32 in the checkpoint, 16 here"):
        make_trainer(config)

    def in_ev(saved):
        saved["config"][TRAINING_DATA_KEY]["units"]["energy"] = "eV"

    ev = altered_checkpoint(checkpoint, tmp_path / "ev.pt", in_ev)
    with pytest.raises(FinetuneError, match="energy in eV.*kcal/mol"):
        make_trainer(finetune_config(data_for("units"), tmp_path / "units", ev))

    def without_oxygen(saved):
        saved["config"][TRAINING_DATA_KEY]["elements"] = [1, 6]

    no_o = altered_checkpoint(checkpoint, tmp_path / "no_o.pt", without_oxygen)
    with pytest.raises(FinetuneError, match="element.*O.*allow_new_elements"):
        make_trainer(finetune_config(data_for("elements"), tmp_path / "elements", no_o))
    make_trainer(finetune_config(data_for("allowed"), tmp_path / "allowed", no_o, allow_new_elements=True))


def test_main_fine_tunes_from_the_flag_and_a_rerun_resumes_its_own_checkpoint(pretrained, tmp_path, capsys):
    checkpoint, _ = pretrained
    data = prepare_ethanol(tmp_path)  # a copy: main.py checks its LMDBs, which the pretraining trainer may hold
    config = tiny_config(data, tmp_path, {"method": "piwsl"})
    config["optim"].update({"max_epochs": 1})
    config = {k: v for k, v in config.items() if k not in ("run_dir", "identifier", "timestamp_id", "seed", "cpu")}
    path = tmp_path / "finetune.yml"
    path.write_text(yaml.safe_dump(config))
    command = ["--mode", "train", "--config", str(path), "--cpu", "--run-dir", str(tmp_path / "runs")]
    assert main([*command, "--finetune-from", str(checkpoint)]) == 0
    checkpoints = list((tmp_path / "runs/checkpoints").glob("*/checkpoint.pt"))
    assert len(checkpoints) == 1
    first = torch.load(checkpoints[0], weights_only=False)
    assert first["config"]["optim"]["finetune"]["checkpoint"] == str(checkpoint) and first["step"] > 0
    gc.collect()  # the first run's trainer, in reference cycles, still holds the LMDBs of this process
    assert main([*command, "--finetune-from", str(checkpoint)]) == 0  # resumes: nothing more to train
    again = torch.load(checkpoints[0], weights_only=False)
    assert again["step"] == first["step"]
    assert all(
        torch.equal(a, b) for a, b in zip(first["state_dict"].values(), again["state_dict"].values(), strict=True)
    )
    assert main([*command, "--finetune-from", str(tmp_path / "missing.pt")]) == 2
    assert "finetune.checkpoint not found" in capsys.readouterr().err


def test_a_checkpoint_of_fairchems_own_trainer_and_painn_fine_tunes(tmp_path):
    """fairchem's OCPTrainer with its own PaiNN writes the checkpoint; piwsl's PaiNN starts from it."""
    from fairchem.core.trainers import OCPTrainer

    from piwsl.cli import prepare_config

    data = prepare_ethanol(tmp_path)
    config = prepare_config(tiny_config(data, tmp_path / "fairchem", {"method": "baseline"}))
    config["model"] = config["model"] | {"name": "painn"}
    config["optim"]["max_epochs"] = 1
    config["optim"].pop("piwsl", None)
    trainer = OCPTrainer(
        task={}, model=config["model"], outputs=config["outputs"], dataset=config["dataset"],
        optimizer=config["optim"], loss_functions=config["loss_functions"],
        evaluation_metrics=config["evaluation_metrics"], identifier="fairchem", run_dir=str(tmp_path / "fairchem"),
        seed=0, logger="tensorboard", local_rank=0, cpu=True, name="ocp",
    )  # fmt: skip
    trainer.train(disable_eval_tqdm=True)
    checkpoint = Path(trainer.save(checkpoint_file="checkpoint.pt", training_state=True))
    weights = stripped(torch.load(checkpoint, weights_only=False)["state_dict"])
    del trainer
    gc.collect()
    tuned = make_trainer(
        finetune_config(prepare_ethanol(tmp_path / "tune"), tmp_path / "tune", checkpoint, weights="raw")
    )
    assert type(tuned._unwrapped_model).__name__ != "PaiNN"  # piwsl's PaiNN, fairchem's weights
    assert all(torch.equal(weights[name], p) for name, p in tuned._unwrapped_model.named_parameters())


def test_energy_only_fine_tuning_keeps_the_pretrained_force_normalizer(pretrained, tmp_path):
    """The force head of the checkpoint predicts forces in units of its force RMS; an energy-only set fits none."""
    checkpoint, _ = pretrained
    saved = torch.load(checkpoint, weights_only=False)["normalizers"]
    assert "forces" in saved and float(saved["forces"]["rmsd"]) != 1.0
    data = prepare_ethanol(tmp_path, energy_only=True)
    config = tiny_config(data, tmp_path, {"method": "baseline"})
    config["loss_functions"] = [
        {"energy": {"fn": "mae", "coefficient": 1}},
        {"forces": {"fn": "l2mae", "coefficient": 0}},
    ]
    config["dataset"]["train"]["transforms"] = {
        "normalizer": {"fit": {"targets": ["energy"], "override_values": {}, "batch_size": 64}}
    }
    config["evaluation_metrics"]["primary_metric"] = "energy_mae"
    scratch = make_trainer(copy.deepcopy(config))
    assert "forces" not in scratch.normalizers
    del scratch
    config["optim"]["finetune"] = {"checkpoint": str(checkpoint)}
    trainer = make_trainer(config)
    assert float(trainer.normalizers["forces"].rmsd) == pytest.approx(float(saved["forces"]["rmsd"]))


def test_normalizers_checkpoint_takes_every_normalizer_of_the_pretrained_model(pretrained, tmp_path):
    """One molecule's energies spread far less than a pretraining set's: keep the pretrained output scale."""
    checkpoint, _ = pretrained

    def rescaled(saved):
        for target in ("energy", "forces"):
            saved["normalizers"][target]["rmsd"] = torch.tensor(7.0)

    altered = altered_checkpoint(checkpoint, tmp_path / "scaled.pt", rescaled)
    refit = make_trainer(finetune_config(prepare_ethanol(tmp_path / "refit"), tmp_path / "refit", altered))
    assert float(refit.normalizers["energy"].rmsd) != pytest.approx(7.0)
    del refit
    data = prepare_ethanol(tmp_path / "kept")
    trainer = make_trainer(finetune_config(data, tmp_path / "kept", altered, normalizers="checkpoint"))
    assert {target: float(n.rmsd) for target, n in trainer.normalizers.items()} == {"energy": 7.0, "forces": 7.0}
    with pytest.raises(PIWSLConfigError, match="finetune.normalizers = 'fresh'; allowed: refit, checkpoint"):
        FinetuneConfig.from_dict({"checkpoint": "x.pt", "normalizers": "fresh"})


def test_shift_energy_removes_the_mean_offset_between_labels_and_pretrained_predictions(pretrained, tmp_path):
    """A new level of theory: every label moved by a constant the pretrained model does not know."""
    checkpoint, _ = pretrained
    data = prepare_ethanol(tmp_path / "plain")
    plain = make_trainer(finetune_config(data, tmp_path / "plain", checkpoint, normalizers="checkpoint"))
    offset = shift_energy_to_labels(plain)  # the pretrained model's mean error on this set, kcal/mol
    assert abs(offset) > 0.01
    del plain
    trainer = make_trainer(
        finetune_config(prepare_ethanol(tmp_path / "shifted"), tmp_path / "shifted", checkpoint,
                        normalizers="checkpoint", shift_energy=True)
    )  # fmt: skip
    saved = torch.load(checkpoint, weights_only=False)["normalizers"]["energy"]
    assert float(trainer.normalizers["energy"].mean) == pytest.approx(float(saved["mean"]) + offset, abs=1e-3)
    assert shift_energy_to_labels(trainer) == pytest.approx(0.0, abs=1e-3)  # nothing left to shift
