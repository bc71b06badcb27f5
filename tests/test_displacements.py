"""Displacement samplers: seeding, magnitudes, atom fraction, frozen atoms, adversarial directions."""

from __future__ import annotations

import pytest
import torch

from piwsl.displacements import AdversarialDisplacementSampler, RandomDisplacementSampler

SIZES = [21, 9, 400]
INDEX = torch.cat([torch.full((n,), i) for i, n in enumerate(SIZES)])


def per_structure(values: torch.Tensor) -> list[torch.Tensor]:
    return list(values.split(SIZES))


def test_same_seed_same_draws_and_state_round_trip():
    first = RandomDisplacementSampler(0.05, seed=3)
    second = RandomDisplacementSampler(0.05, seed=3)
    assert torch.equal(first.sample(INDEX, 3), second.sample(INDEX, 3))
    state = first.state_dict()
    expected = first.sample(INDEX, 3)
    second.load_state_dict(state)
    assert torch.equal(second.sample(INDEX, 3), expected)
    assert not torch.equal(RandomDisplacementSampler(0.05, seed=4).sample(INDEX, 3), expected)


def test_new_displacement_every_call():
    sampler = RandomDisplacementSampler(0.05, seed=0)
    assert not torch.equal(sampler.sample(INDEX, 3), sampler.sample(INDEX, 3))


def test_gaussian_form_is_zero_mean_with_component_std_below_max():
    sampler = RandomDisplacementSampler(0.05, seed=0)
    stds, means = [], []
    for _ in range(200):
        big = per_structure(sampler.sample(INDEX, 3, dtype=torch.float64))[2]
        stds.append(big.std())
        means.append(big.mean(0))
    stds = torch.stack(stds)
    # dr0 ~ U(0, 0.05): each structure's component std is dr0, so within (0, 0.05] up to sampling noise
    assert stds.max() < 0.05 * 1.12 and stds.min() >= 0
    assert 0.02 < stds.mean() < 0.03
    assert torch.stack(means).mean(0).abs().max() < 1e-3  # no rigid shift


def test_normalized_form_has_structure_norm_within_max():
    sampler = RandomDisplacementSampler(0.05, form="normalized", seed=0)
    norms = torch.stack([torch.stack([d.norm() for d in per_structure(sampler.sample(INDEX, 3))]) for _ in range(100)])
    assert norms.max() <= 0.05 + 1e-6
    assert norms.min() > 0


def test_atom_fraction_and_frozen_atoms():
    fixed = torch.zeros(len(INDEX), dtype=torch.long)
    fixed[:10] = 1
    sampler = RandomDisplacementSampler(0.05, atom_fraction=0.3, seed=0)
    moved = torch.stack([(sampler.sample(INDEX, 3, fixed=fixed).abs().sum(-1) > 0) for _ in range(100)])
    assert not moved[:, :10].any()
    assert moved[:, 10:].float().mean() == pytest.approx(0.3, abs=0.02)
    everything = RandomDisplacementSampler(0.05, seed=0).sample(INDEX, 3)
    assert (everything.abs().sum(-1) > 0).all()


def test_adversarial_follows_the_direction_with_random_sign():
    direction = torch.randn(len(INDEX), 3, generator=torch.Generator().manual_seed(0))
    sampler = AdversarialDisplacementSampler(0.05, seed=1)
    signs = set()
    for _ in range(20):
        displacement = sampler.sample(direction, INDEX, 3)
        for d, g, n in zip(per_structure(displacement), per_structure(direction), SIZES, strict=False):
            cosine = float((d * g).sum() / (d.norm() * g.norm()))
            assert abs(abs(cosine) - 1) < 1e-5
            signs.add(round(cosine))
            # same expected size as the Gaussian form: |dr|^2 = 3 n dr0^2, dr0 <= max
            assert float(d.square().sum()) <= 3 * n * 0.05**2 * (1 + 1e-5)
    assert signs == {-1, 1}


def test_adversarial_normalized_form_and_frozen_atoms():
    direction = torch.randn(len(INDEX), 3, generator=torch.Generator().manual_seed(0))
    fixed = torch.zeros(len(INDEX), dtype=torch.long)
    fixed[:5] = 1
    sampler = AdversarialDisplacementSampler(0.05, form="normalized", seed=1)
    displacement = sampler.sample(direction, INDEX, 3, fixed=fixed)
    assert torch.all(displacement[:5] == 0)
    assert all(d.norm() <= 0.05 + 1e-6 for d in per_structure(displacement))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_displacement": 0.0}, "max_displacement"),
        ({"max_displacement": 0.05, "form": "uniform"}, "form"),
        ({"max_displacement": 0.05, "atom_fraction": 0.0}, "atom_fraction"),
        ({"max_displacement": 0.05, "atom_fraction": 1.5}, "atom_fraction"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomDisplacementSampler(**kwargs)
