"""Using a trained model: units and references from the checkpoint, domain checks, predictions, plots."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_helpers import ETHANOL, make_trainer, tiny_config, without_training_record

from piwsl.data.formats import read_rmd17
from piwsl.data.prepare import prepare_dataset
from piwsl.data.units import EV_TO_KCAL_PER_MOL
from piwsl.training_data import OutsideTrainingDomainError, TrainingData


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny PaiNN trained briefly on ethanol whose fitted self energies were subtracted; its checkpoint and data."""
    directory = tmp_path_factory.mktemp("model")
    data = directory / "ethanol_referenced"
    prepare_dataset(read_rmd17(ETHANOL), data, 16, 8, 16, 0, ETHANOL, "rmd17", self_energies="fit")
    trainer = make_trainer(tiny_config(data, directory, {"method": "piwsl"}))
    trainer.config["optim"]["max_epochs"] = 1
    trainer.train(disable_eval_tqdm=True)
    checkpoint = Path(trainer.save(checkpoint_file="best_checkpoint.pt", training_state=False))
    del trainer
    return checkpoint, data


def test_checkpoint_records_units_references_elements_and_structures(trained):
    checkpoint, _ = trained
    record = TrainingData.from_checkpoint(torch.load(checkpoint, weights_only=False))
    assert record.units == {"energy": "kcal/mol", "forces": "kcal/mol/Angstrom", "positions": "Angstrom"}
    assert record.elements == (1, 6, 8)
    assert record.element_references["method"] == "fit" and set(record.element_references["energies"]) == {
        "H",
        "C",
        "O",
    }
    assert len(record.fingerprints) == 16


def test_evaluate_uses_the_unit_and_warns_about_training_structures(trained, caplog, tmp_path):
    from piwsl.evaluate import evaluate, load_trainer

    checkpoint, data = trained
    trainer = load_trainer(checkpoint)
    errors, predictions = evaluate(trainer, data / "test", progress=False, keep_predictions=True)
    assert errors.energy_unit == "kcal/mol" and errors.in_training_set == 0
    assert predictions.energy.dtype == np.float64 and predictions.forces.shape == (16 * 9, 3)
    with caplog.at_level(logging.WARNING):
        errors = evaluate(trainer, data / "train", progress=False)
    assert (
        errors.in_training_set == 16 and "16 of 16 evaluated structures are in the model's training set" in caplog.text
    )
    trainer.training_data = dataclasses.replace(trainer.training_data, elements=(1, 6))
    with pytest.raises(OutsideTrainingDomainError, match="element\\(s\\) O never occur"):
        evaluate(trainer, data / "test", progress=False)
    assert evaluate(trainer, data / "test", progress=False, allow_unseen_elements=True).num_structures == 16


def test_evaluate_script_writes_full_precision_predictions_and_plots(trained, tmp_path, capsys):
    import importlib.util

    from trainer_helpers import ROOT

    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts/evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    checkpoint, data = trained
    outputs = {name: tmp_path / name for name in ("p.npz", "p.csv", "parity.png")}
    common = ["--checkpoint", str(checkpoint), "--data", str(data / "test")]
    assert script.main(common + ["--predictions", str(outputs["p.npz"]), "--plot", str(outputs["parity.png"])]) == 0
    assert "energy_rmse" in capsys.readouterr().out
    assert script.main(common + ["--predictions", str(outputs["p.csv"])]) == 0
    saved = np.load(outputs["p.npz"])
    assert saved["energy"].dtype == np.float64 and saved["forces"].shape == (16 * 9, 3)
    rows = outputs["p.csv"].read_text().splitlines()
    assert len(rows) == 2 + 16 and float(rows[2].split(",")[2]) == pytest.approx(saved["energy"][0], rel=1e-15)
    assert outputs["parity.png"].stat().st_size > 10_000


def test_calculator_restores_total_energies_in_ev_and_refuses_foreign_inputs(trained):
    from ase import Atoms

    from piwsl.calculator import PIWSLCalculator
    from piwsl.experiments.diagnostics import load_structures

    checkpoint, data = trained
    calculator = PIWSLCalculator(checkpoint)
    atoms = load_structures(data / "test", [0])[0]
    energies, _ = calculator.predict([atoms])
    atoms.calc = calculator
    references = calculator.training_data.reference_energy(atoms.numbers)
    assert abs(references) > 1000  # fitted self energies of ethanol (kcal/mol)
    assert atoms.get_potential_energy() == pytest.approx((energies[0] + references) / EV_TO_KCAL_PER_MOL, rel=1e-6)
    with pytest.raises(OutsideTrainingDomainError, match="element\\(s\\) N never occur"):
        PIWSLCalculator.calculate(calculator, Atoms("NH3", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    permissive = PIWSLCalculator(checkpoint, allow_unseen_elements=True)
    assert np.isfinite(permissive.predict([Atoms("NH", positions=[[0, 0, 0], [1.0, 0, 0]])])[0]).all()
    overlapping = atoms.copy()
    overlapping.positions[1] = overlapping.positions[0] + [0.05, 0, 0]
    with pytest.raises(OutsideTrainingDomainError, match="atoms 0 .* and 1 .* 0.050 Å apart"):
        calculator.predict([overlapping])


def test_calculator_needs_a_unit_for_checkpoints_without_a_record(trained, tmp_path):
    from piwsl.calculator import PIWSLCalculator

    checkpoint, _ = trained
    old = without_training_record(checkpoint, tmp_path / "best_checkpoint.pt")
    with pytest.raises(ValueError, match="does not record the unit"):
        PIWSLCalculator(old)
    assert PIWSLCalculator(old, energy_unit="eV").ev_per_unit == 1.0


def test_learning_curves_show_every_logged_term_of_train_and_val(trained, tmp_path, capsys):
    import importlib.util

    from trainer_helpers import ROOT

    from piwsl.plots import find_logs_dir, read_scalars

    checkpoint, _ = trained
    run_dir = checkpoint.parents[2]
    curves = read_scalars(find_logs_dir(run_dir))
    assert {"train", "val"} <= set(curves["forces_mae"]) and "train" in curves["pitc_loss"]
    spec = importlib.util.spec_from_file_location("curves_script", ROOT / "scripts/plot_learning_curves.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(run_dir), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert script.main([str(tmp_path)]) == 2 and "no tensorboard logs" in capsys.readouterr().err
