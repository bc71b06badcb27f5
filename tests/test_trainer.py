"""PIWSLTrainer on real (GFN2-xTB ethanol) data with a tiny PaiNN: losses, logging, modes."""

from __future__ import annotations

import copy
import dataclasses
import gc

import pytest
import torch
from trainer_helpers import make_trainer, prepare_ethanol, tiny_config

from piwsl.losses import PITCLoss


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_ethanol(tmp_path_factory.mktemp("data"))


def first_batch(trainer):
    return next(iter(trainer.train_loader))


def loss_at(trainer, batch, sampler_state):
    """Total training loss on ``batch`` with the displacement generator reset to ``sampler_state``."""
    trainer.random_sampler.load_state_dict(sampler_state)
    trainer.model.train()
    out = trainer._forward(copy.deepcopy(batch))
    return trainer._compute_loss(out, batch)


def test_piwsl_training_decreases_the_loss(data, tmp_path):
    config = tiny_config(data, tmp_path, {"method": "piwsl", "preset": "D"})
    config["optim"]["lr_initial"] = 2e-3
    trainer = make_trainer(config)
    trainer.step = 1
    batch = first_batch(trainer)
    state = copy.deepcopy(trainer.random_sampler.state_dict())
    before = float(loss_at(trainer, batch, state))
    for _ in range(30):
        for train_batch in trainer.train_loader:
            trainer._backward(loss_at(trainer, train_batch, trainer.random_sampler.state_dict()))
    after = float(loss_at(trainer, batch, state))
    assert after < 0.9 * before, (before, after)


def test_every_term_is_logged_to_tensorboard(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(data, tmp_path, {"method": "piwsl", "c_pitc": 1.0, "c_pisc": 0.1})
    trainer = make_trainer(config, print_every=2)
    trainer.train(disable_eval_tqdm=True)
    trainer.logger.writer.flush()
    events = EventAccumulator(trainer.config["cmd"]["logs_dir"])
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("supervised_loss", "pitc_loss", "pisc_loss", "loss", "energy_mae", "forces_mae"):
        assert f"train/{name}" in tags, tags
    assert "val/forces_mae" in tags
    values = [event.value for event in events.Scalars("train/pitc_loss")]
    assert all(v >= 0 and v == v for v in values)


def test_consistency_terms_are_formed_in_physical_units(data, tmp_path):
    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "piwsl", "c_pitc": 1.0, "c_pisc": 0.0}))
    trainer.step = 1
    trainer.model.train()
    batch = first_batch(trainer)
    out = trainer._forward(batch)
    pending = trainer._pending
    terms = trainer._consistency_terms(out, batch, pending)
    # denormalize in float64: kcal/mol, relative to the training mean (residuals do not depend on the energy zero)
    normalizer = trainer.normalizers["energy"]
    energy = out["energy"].view(-1).double() * normalizer.rmsd.double()
    forces = trainer.normalizers["forces"](out["forces"]).view(-1, 3)
    std = float(trainer.normalizers["energy"].rmsd)
    expected = PITCLoss(energy_scale=std, form=trainer.piwsl_config.consistency_form)(
        energy,
        forces.double(),
        pending.displaced.energy.double(),
        pending.displacement.double(),
        batch.batch,
        pending.displaced.forces.double(),
    ).mean()
    assert std > 0.5  # real ethanol energies spread over more than a kcal/mol
    assert float(terms["pitc"][1]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(
    "direct_forces, fraction, form",
    [
        (True, 1.0, "taylor"),
        (False, 1.0, "taylor"),
        (True, 0.5, "taylor"),
        (False, 0.5, "taylor"),
        (True, 1.0, "trapezoid"),
        (False, 0.5, "trapezoid"),
    ],
)
def test_batched_and_sequential_forward_agree(data, tmp_path, direct_forces, fraction, form):
    results = {}
    for mode in ("batched", "sequential"):
        section = {
            "method": "piwsl",
            "forward_mode": mode,
            "c_pisc": 0.5,
            "consistency_fraction": fraction,
            "consistency_form": form,
        }
        config = tiny_config(data, tmp_path / mode, section, direct_forces=direct_forces)
        trainer = make_trainer(config)
        trainer.step = 1
        batch = first_batch(trainer)
        loss = loss_at(trainer, batch, {"generator": torch.Generator().manual_seed(5).get_state()})
        loss.backward()
        grads = torch.cat([p.grad.view(-1) for p in trainer.model.parameters() if p.grad is not None])
        results[mode] = (loss.detach(), grads)
        del trainer
        gc.collect()  # closes the LMDB before the next trainer opens it
    assert torch.allclose(results["batched"][0], results["sequential"][0], rtol=1e-5)
    batched, sequential = results["batched"][1], results["sequential"][1]
    assert torch.allclose(batched, sequential, rtol=1e-4, atol=1e-5 * float(sequential.abs().max()))


@pytest.mark.parametrize(
    "section, term",
    [
        ({"method": "noisynode"}, None),
        ({"method": "weak_label"}, "weak_label_loss"),
        ({"method": "piwsl", "direction": "adversarial"}, "pisc_loss"),
        ({"method": "piwsl", "pisc_variant": "eq16", "pointwise_loss": "mae"}, "pisc_loss"),
        ({"method": "piwsl", "atom_fraction": 0.5, "displacement_form": "normalized"}, "pitc_loss"),
    ],
)
def test_methods_and_options_train(data, tmp_path, section, term):
    trainer = make_trainer(tiny_config(data, tmp_path, section))
    trainer.train(disable_eval_tqdm=True)
    assert trainer.step > 0
    if term is not None:
        assert term in trainer.metrics, trainer.metrics


def test_consistency_fraction_and_every_kth_step(data, tmp_path):
    section = {"method": "piwsl", "consistency_fraction": 0.5, "consistency_every": 2}
    trainer = make_trainer(tiny_config(data, tmp_path, section))
    trainer.model.train()
    batch = first_batch(trainer)
    trainer.step = 1
    trainer._forward(copy.deepcopy(batch))
    assert trainer._pending is None
    trainer.step = 2
    out = trainer._forward(copy.deepcopy(batch))
    pending = trainer._pending
    assert pending.subset.numel() == 2 and int(pending.target.natoms.numel()) == 2
    assert pending.displacement.shape == (int(pending.target.natoms.sum()), 3)
    terms = trainer._consistency_terms(out, batch, pending)
    assert set(terms) == {"pitc", "pisc"} and all(torch.isfinite(v) for _, v in terms.values())


def test_warmup_keeps_consistency_terms_off(data, tmp_path):
    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "piwsl", "warmup_steps": 1000}))
    trainer.train(disable_eval_tqdm=True)
    assert "pitc_loss" not in trainer.metrics


def test_energy_only_training_without_force_labels(tmp_path):
    data = prepare_ethanol(tmp_path, energy_only=True)
    config = tiny_config(data, tmp_path, {"method": "piwsl", "c_pitc": 0.1, "c_pisc": 0.01})
    config["loss_functions"][1]["forces"]["coefficient"] = 0
    config["dataset"]["train"]["transforms"]["normalizer"]["fit"]["targets"] = {"energy": {}}
    trainer = make_trainer(config)
    assert "forces" not in first_batch(trainer).keys()
    assert [target for target, _ in trainer.loss_functions] == ["energy"]
    trainer.train(disable_eval_tqdm=True)
    metrics = trainer.validate("val", disable_tqdm=True)
    assert metrics["forces_mae"]["metric"] > 0  # val keeps its force labels
    assert "pitc_loss" in trainer.metrics and "pisc_loss" in trainer.metrics


def test_missing_outputs_and_static_graphs_are_rejected(data, tmp_path):
    config = tiny_config(data, tmp_path, {"method": "piwsl"})
    config["model"]["otf_graph"] = False
    with pytest.raises(ValueError, match="otf_graph"):
        make_trainer(config)


def test_gradient_forces_stay_minus_the_gradient_of_the_energy_in_physical_units(data, tmp_path):
    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "piwsl"}, direct_forces=False))
    energy_scale = float(trainer.normalizers["energy"].rmsd)
    assert float(trainer.normalizers["forces"].rmsd) == pytest.approx(energy_scale)
    trainer.model.train()
    batch = first_batch(trainer)
    trainer.step = 0  # no consistency terms: only the original geometry
    batch.pos.requires_grad_(True)
    out = super(type(trainer), trainer)._forward(batch)
    geometry = trainer._physical(batch, out)
    (gradient,) = torch.autograd.grad(geometry.energy.sum(), batch.pos)
    assert torch.allclose(geometry.forces, -gradient, rtol=1e-4, atol=1e-4 * float(gradient.abs().max()))


def test_metrics_equal_fairchems_without_its_per_structure_loop(data, tmp_path):
    from fairchem.core.trainers import OCPTrainer

    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "baseline"}))
    batch = first_batch(trainer)
    batch.fixed[::3] = 1  # free-atom counting and masking must match fairchem's
    trainer.model.eval()
    with torch.no_grad():
        out = trainer._forward(batch)
    ours = trainer._compute_metrics(out, batch, trainer.evaluator)
    reference = OCPTrainer._compute_metrics(trainer, out, batch, trainer.evaluator)
    assert ours.keys() == reference.keys() and len(ours) >= 4
    for name, value in reference.items():
        assert ours[name]["metric"] == pytest.approx(value["metric"], rel=1e-6), name
        assert ours[name]["numel"] == value["numel"], name


def test_auto_forward_mode_stacks_unless_on_one_cpu_thread(data, tmp_path):
    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "piwsl", "forward_mode": "auto"}))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert not trainer.batched_forward
        torch.set_num_threads(2)
        assert trainer.batched_forward
    finally:
        torch.set_num_threads(threads)
    for mode, stacked in (("batched", True), ("sequential", False)):
        trainer.piwsl_config = dataclasses.replace(trainer.piwsl_config, forward_mode=mode)
        assert trainer.batched_forward is stacked


def reference_pitc(trainer, out, batch, pending, form: str) -> float:
    """PITC of the batch in float64 from the normalized outputs: the exact value the trainer should match."""
    std = trainer.energy_scale
    forces = trainer.normalizers["forces"](out["forces"]).view(-1, 3).double()
    energy = out["energy"].view(-1).double() * std
    displaced = pending.displaced
    return float(
        PITCLoss(energy_scale=std, form=form)(
            energy,
            forces,
            displaced.energy.double(),
            pending.displacement.double(),
            batch.batch,
            displaced.forces.double(),
        ).mean()
    )


def weak_label_step(trainer):
    """The weak-label term of the first training batch: (value, batch, displaced predictions)."""
    trainer.step = 1
    trainer.model.train()
    batch = first_batch(trainer)
    out = trainer._forward(batch)
    pending = trainer._pending
    return float(trainer._consistency_terms(out, batch, pending)["weak_label"][1]), batch, pending


def reference_weak_label(trainer, batch, pending, labels: torch.Tensor) -> float:
    """The weak-label loss of the batch in float64, for reference energies ``labels`` (B,) on the model's scale."""
    from piwsl.losses import WeakLabelLoss

    return float(
        WeakLabelLoss(energy_scale=trainer.energy_scale)(
            pending.displaced.energy.double(),
            labels,
            batch.forces.view(-1, 3).double(),
            pending.displacement.double(),
            batch.batch,
        ).mean()
    )


@pytest.mark.parametrize("form", ["taylor", "trapezoid"])
def test_residuals_are_exact_with_total_energies_of_minus_406000(tmp_path, form):
    """Energies offset by -406,000 kcal/mol (rMD17 aspirin's scale): float32 totals would round residuals."""
    from trainer_helpers import ETHANOL

    from piwsl.data.formats import read_rmd17
    from piwsl.data.prepare import prepare_dataset

    structures = read_rmd17(ETHANOL)
    for structure in structures:
        structure.energy -= 406_000.0
    data = tmp_path / "offset"
    prepare_dataset(structures, data, 16, 8, 16, 0, ETHANOL, "rmd17", check_units=False)
    section = {"method": "piwsl", "c_pitc": 1.0, "c_pisc": 0.0, "consistency_form": form, "max_displacement": 0.01}
    trainer = make_trainer(tiny_config(data, tmp_path, section))
    assert float(trainer.normalizers["energy"].mean) < -400_000
    trainer.step = 1
    trainer.model.train()
    batch = first_batch(trainer)
    out = trainer._forward(batch)
    pending = trainer._pending
    # Energies handed to the losses are relative to the normalizer's mean: of the size of the data's spread.
    assert float(pending.displaced.energy.abs().max()) < 100 * trainer.energy_scale
    value = float(trainer._consistency_terms(out, batch, pending)["pitc"][1])
    assert value == pytest.approx(reference_pitc(trainer, out, batch, pending, form), rel=1e-4)


def test_weak_label_target_is_exact_with_total_energies(tmp_path):
    from trainer_helpers import ETHANOL

    from piwsl.data.formats import read_rmd17
    from piwsl.data.prepare import prepare_dataset

    structures = read_rmd17(ETHANOL)
    for structure in structures:
        structure.energy -= 406_000.0
    data = tmp_path / "offset"
    prepare_dataset(structures, data, 16, 8, 16, 0, ETHANOL, "rmd17", check_units=False)
    trainer = make_trainer(tiny_config(data, tmp_path, {"method": "weak_label", "max_displacement": 0.01}))
    value, batch, pending = weak_label_step(trainer)
    # the float32 labels as stored, minus the normalizer's mean, differenced in float64
    labels = batch.energy.view(-1).double() - float(trainer.normalizers["energy"].mean)
    assert value == pytest.approx(reference_weak_label(trainer, batch, pending, labels), rel=1e-4)


def test_fairchem_element_references_are_an_offset_the_consistency_terms_share(tmp_path):
    """fairchem's ``transforms.element_references`` (an existing OCP project's setting) with total energies.

    fairchem subtracts the references from the targets in its loss and adds them to the predictions;
    the weak-label target and the model's energies must both be relative to references plus mean.
    """
    import numpy as np
    from trainer_helpers import ETHANOL

    from piwsl.data.formats import read_rmd17
    from piwsl.data.prepare import prepare_dataset

    references = np.zeros(119)
    references[[1, 6, 8]] = [-320.5, -23_810.25, -47_030.0]  # kcal/mol, an arbitrary but large offset
    np.savez(tmp_path / "references.npz", element_references=references)
    data = tmp_path / "ethanol"
    prepare_dataset(read_rmd17(ETHANOL), data, 16, 8, 16, 0, ETHANOL, "rmd17")
    config = tiny_config(data, tmp_path, {"method": "weak_label", "max_displacement": 0.01})
    transforms = config["dataset"]["train"]["transforms"]
    transforms["element_references"] = {"energy": {"file": str(tmp_path / "references.npz")}}
    trainer = make_trainer(config)
    assert "energy" in trainer.elementrefs
    value, batch, pending = weak_label_step(trainer)
    offsets = torch.zeros(int(batch.natoms.numel()), dtype=torch.float64)
    offsets.index_add_(0, batch.batch, torch.as_tensor(references)[batch.atomic_numbers.long().view(-1)])
    labels = batch.energy.view(-1).double() - offsets - float(trainer.normalizers["energy"].mean)
    assert float(labels.abs().max()) < 50 * trainer.energy_scale  # the references took the offset away
    assert value == pytest.approx(reference_weak_label(trainer, batch, pending, labels), rel=1e-4)
