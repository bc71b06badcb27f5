"""Property-based tests (hypothesis) of the losses and samplers over random shapes, batches and magnitudes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from piwsl.displacements import AdversarialDisplacementSampler, RandomDisplacementSampler
from piwsl.losses import PISCLoss, PITCLoss, WeakLabelLoss

sizes_strategy = st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=6)
magnitude = st.floats(min_value=1e-3, max_value=0.3)
kinds = st.sampled_from(["mse", "mae", "relu"])
variants = st.sampled_from(["eq4", "eq15", "eq16"])


def random_batch(sizes: list[int], seed: int, scale: float):
    generator = torch.Generator().manual_seed(seed)
    index = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    atoms, structures = len(index), len(sizes)

    def draw(*shape, spread=1.0):
        return spread * torch.randn(*shape, generator=generator, dtype=torch.float64)

    energies = [draw(structures, spread=10.0) for _ in range(3)]
    forces = [draw(atoms, 3, spread=5.0) for _ in range(3)]
    return index, energies, forces, draw(atoms, 3, spread=scale), draw(atoms, 3, spread=scale)


def all_losses(kind, variant, index, energies, forces, dr, dr_prime):
    (e, ed, ep), (f, fd, fp) = energies, forces
    return (
        PITCLoss(kind, energy_scale=3.0)(e, f, ed, dr, index),
        PISCLoss(kind, energy_scale=3.0, variant=variant)(e, f, ed, fd, ep, fp, dr, dr_prime, index),
        WeakLabelLoss(kind, energy_scale=3.0)(ed, e, f, dr, index),
    )


@settings(max_examples=60, deadline=None)
@given(sizes=sizes_strategy, seed=st.integers(0, 10_000), scale=magnitude, kind=kinds, variant=variants)
def test_each_structure_loss_depends_only_on_that_structure(sizes, seed, scale, kind, variant):
    index, energies, forces, dr, dr_prime = random_batch(sizes, seed, scale)
    batched = all_losses(kind, variant, index, energies, forces, dr, dr_prime)
    for structure in range(len(sizes)):
        atoms = index == structure
        alone = all_losses(
            kind,
            variant,
            torch.zeros(int(atoms.sum()), dtype=torch.long),
            [e[structure : structure + 1] for e in energies],
            [f[atoms] for f in forces],
            dr[atoms],
            dr_prime[atoms],
        )
        for in_batch, single in zip(batched, alone, strict=True):
            assert in_batch.shape == (len(sizes),)
            assert torch.allclose(in_batch[structure], single[0], rtol=1e-12, atol=1e-12)
            assert in_batch[structure] >= 0


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_strategy, seed=st.integers(0, 10_000), scale=magnitude)
def test_pitc_is_zero_for_a_linear_potential_at_any_displacement(sizes, seed, scale):
    index, _, _, dr, _ = random_batch(sizes, seed, scale)
    positions = torch.randn(len(index), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    field = torch.tensor([1.5, -0.7, 2.2], dtype=torch.float64)

    def energy(r):
        return torch.zeros(len(sizes), dtype=torch.float64).index_add(0, index, r @ field)

    forces = -field.expand_as(positions)
    loss = PITCLoss()(energy(positions), forces, energy(positions + dr), dr, index)
    assert torch.allclose(loss, torch.zeros_like(loss), atol=1e-20)


@settings(max_examples=40, deadline=None)
@given(sizes=sizes_strategy, seed=st.integers(0, 10_000), unit=st.floats(min_value=1e-3, max_value=1e3))
def test_losses_do_not_depend_on_the_energy_unit(sizes, seed, unit):
    index, energies, forces, dr, dr_prime = random_batch(sizes, seed, 0.05)
    (e, ed, _), (f, _, _) = energies, forces
    reference = PITCLoss(energy_scale=2.0)(e, f, ed, dr, index)
    converted = PITCLoss(energy_scale=2.0 * unit)(e * unit, f * unit, ed * unit, dr, index)
    assert torch.allclose(reference, converted, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    sizes=sizes_strategy,
    seed=st.integers(0, 10_000),
    max_displacement=st.floats(min_value=1e-3, max_value=0.3),
    fraction=st.floats(min_value=0.05, max_value=1.0),
    form=st.sampled_from(["gaussian", "normalized"]),
    fixed_every=st.integers(min_value=2, max_value=5),
)
def test_samplers_respect_shape_fixed_atoms_bounds_and_seed(sizes, seed, max_displacement, fraction, form, fixed_every):
    index = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    fixed = (torch.arange(len(index)) % fixed_every == 0).long()
    settings_ = {"max_displacement": max_displacement, "form": form, "atom_fraction": fraction, "seed": seed}
    first = RandomDisplacementSampler(**settings_).sample(index, len(sizes), fixed=fixed, dtype=torch.float64)
    again = RandomDisplacementSampler(**settings_).sample(index, len(sizes), fixed=fixed, dtype=torch.float64)
    assert first.shape == (len(index), 3) and torch.equal(first, again)
    assert torch.all(first[fixed.bool()] == 0) and torch.isfinite(first).all()
    if form == "normalized":
        for structure in range(len(sizes)):
            assert first[index == structure].norm() <= max_displacement * (1 + 1e-9)
    direction = torch.randn(len(index), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    adversarial = AdversarialDisplacementSampler(**settings_).sample(direction, index, len(sizes), fixed=fixed)
    assert torch.all(adversarial[fixed.bool()] == 0)
    moved = adversarial.abs().sum(-1) > 0
    for structure in range(len(sizes)):
        atoms = (index == structure) & moved
        if atoms.sum() == 0:
            continue
        d, g = adversarial[atoms].reshape(-1), direction[atoms].reshape(-1)
        assert abs(abs(float(d @ g) / float(d.norm() * g.norm())) - 1) < 1e-9  # along +-direction
