"""Physics of the consistency losses, checked on an exactly conservative analytic potential."""

from __future__ import annotations

import pytest
import torch
from analytic import morse_energy, morse_energy_and_forces, random_molecules

from piwsl.losses import PISCLoss, PITCLoss, WeakLabelLoss, path_energy, pointwise_loss, taylor_energy

SIZES = [3, 7, 5]


def displacement_of(scale: float, num_atoms: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(num_atoms, 3, generator=generator, dtype=torch.float64)


def geometries(scale: float):
    """Exact energies and forces at S, S + dr and S + dr' for a batch of three clusters."""
    positions, index = random_molecules(SIZES)
    dr = displacement_of(scale, len(index), seed=1)
    dr_prime = displacement_of(scale, len(index), seed=2)
    exact = {
        name: morse_energy_and_forces(positions + shift, index, len(SIZES))
        for name, shift in (("s", 0 * dr), ("d", dr), ("p", dr_prime))
    }
    return index, dr, dr_prime, exact


def pisc_inputs(exact, dr, dr_prime, index):
    return (
        exact["s"][0],
        exact["s"][1],
        exact["d"][0],
        exact["d"][1],
        exact["p"][0],
        exact["p"][1],
        dr,
        dr_prime,
        index,
    )


@pytest.mark.parametrize("variant", ["eq4", "eq15", "eq16"])
def test_consistency_losses_of_exact_model_vanish_as_fourth_power(variant):
    pitc_values, pisc_values = [], []
    for scale in (0.01, 0.005, 0.0025):
        index, dr, dr_prime, exact = geometries(scale)
        pitc = PITCLoss()(exact["s"][0], exact["s"][1], exact["d"][0], dr, index)
        pisc = PISCLoss(variant=variant)(*pisc_inputs(exact, dr, dr_prime, index))
        pitc_values.append(pitc)
        pisc_values.append(pisc)
    for values in (pitc_values, pisc_values):
        assert torch.all(values[-1] < 1e-4)
        for coarse, fine in zip(values, values[1:], strict=False):
            ratio = coarse / fine  # halving |dr| divides an O(|dr|^4) loss by 16
            assert torch.all((ratio > 10) & (ratio < 24)), ratio


def test_weak_label_with_exact_labels_vanishes_as_fourth_power():
    values = []
    for scale in (0.02, 0.01):
        index, dr, _, exact = geometries(scale)
        values.append(WeakLabelLoss()(exact["d"][0], exact["s"][0], exact["s"][1], dr, index))
    ratio = values[0] / values[1]
    assert torch.all((ratio > 10) & (ratio < 24))


def test_inconsistent_forces_give_large_losses():
    index, dr, dr_prime, exact = geometries(0.005)
    consistent = PITCLoss()(exact["s"][0], exact["s"][1], exact["d"][0], dr, index)
    rotated = exact["s"][1][:, [1, 2, 0]]  # same magnitudes, wrong directions: not -grad E
    inconsistent = PITCLoss()(exact["s"][0], rotated, exact["d"][0], dr, index)
    assert torch.all(inconsistent > 100 * consistent)
    bad = dict(exact)
    bad["p"] = (exact["p"][0], 3 * exact["p"][1])
    assert torch.all(
        PISCLoss()(*pisc_inputs(bad, dr, dr_prime, index)) > 100 * PISCLoss()(*pisc_inputs(exact, dr, dr_prime, index))
    )


def test_structures_in_a_batch_do_not_leak_into_each_other():
    index, dr, dr_prime, exact = geometries(0.02)
    reference = PISCLoss()(*pisc_inputs(exact, dr, dr_prime, index))
    changed = {k: (v[0].clone(), v[1].clone()) for k, v in exact.items()}
    in_last = index == 2
    changed["p"][1][in_last] *= 5  # corrupt the forces of the last structure only
    changed["s"][0][2] += 3.0
    values = PISCLoss()(*pisc_inputs(changed, dr, dr_prime, index))
    assert torch.equal(values[:2], reference[:2])
    assert values[2] != reference[2]


def slow_first_order(energy, forces, dr, index, structure, forces_end=None):
    """``E(A) - sum <d, F(A)>`` (Taylor) or ``E(A) - sum <d, (F(A) + F(B)) / 2>`` (trapezoid), one structure."""
    if forces_end is not None:
        forces = (forces + forces_end) / 2
    atoms = (index == structure).nonzero().view(-1).tolist()
    return float(energy[structure]) - sum(float(dr[i] @ forces[i]) for i in atoms)


@pytest.mark.parametrize("form", ["taylor", "trapezoid"])
@pytest.mark.parametrize("kind", ["mse", "mae", "relu"])
@pytest.mark.parametrize("variant", ["eq4", "eq15", "eq16"])
def test_losses_match_a_slow_loop_over_structures(kind, variant, form):
    index, dr, dr_prime, exact = geometries(0.03)
    noisy = {k: (e + 0.3 * torch.arange(len(e)), f * 1.1) for k, (e, f) in exact.items()}  # not consistent
    scale = 2.5
    (e, f), (ed, fd), (ep, fp) = noisy["s"], noisy["d"], noisy["p"]
    ddr = dr - dr_prime
    trapezoid = form == "trapezoid"
    pitc = PITCLoss(kind, energy_scale=scale, form=form)(e, f, ed, dr, index, forces_displaced=fd)
    pisc = PISCLoss(kind, energy_scale=scale, variant=variant, form=form)(e, f, ed, fd, ep, fp, dr, dr_prime, index)
    weak = WeakLabelLoss(kind, energy_scale=scale)(ed, e, f, dr, index)

    def ell(a, b, base, step, structure):
        r = (float(a) - float(b)) / scale
        if kind == "mse":
            return r**2
        if kind == "mae":
            return abs(r)
        squared_norm = float(step[index == structure].square().sum())
        return max(abs(r) - abs(float(base)) * squared_norm / scale, 0.0)

    def end(forces_at_end):
        return forces_at_end if trapezoid else None

    for s in range(len(SIZES)):
        pitc_target = slow_first_order(e, f, dr, index, s, end(fd))
        weak_target = slow_first_order(e, f, dr, index, s)
        assert float(pitc[s]) == pytest.approx(ell(ed[s], pitc_target, ed[s], dr, s), rel=1e-10, abs=1e-12)
        assert float(weak[s]) == pytest.approx(ell(ed[s], weak_target, ed[s], dr, s), rel=1e-10, abs=1e-12)
        if variant == "eq4":
            expected = ell(ed[s], slow_first_order(ep, fp, ddr, index, s, end(fd)), ed[s], ddr, s)
        elif variant == "eq15":
            first = slow_first_order(e, f, dr, index, s, end(fd))
            expected = ell(first, slow_first_order(ep, fp, ddr, index, s, end(fd)), first, ddr, s)
        else:
            expected = ell(ep[s], slow_first_order(ed, fd, -ddr, index, s, end(fp)), ep[s], ddr, s)
        assert float(pisc[s]) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_gradients_flow_through_both_sides_unless_detached():
    index, dr, _, exact = geometries(0.02)
    energy = exact["s"][0].clone().requires_grad_(True)
    forces = exact["s"][1].clone().requires_grad_(True)
    displaced = (exact["d"][0] + 1.0).requires_grad_(True)
    PITCLoss()(energy, forces, displaced, dr, index).sum().backward()
    assert energy.grad.abs().sum() > 0 and forces.grad.abs().sum() > 0 and displaced.grad.abs().sum() > 0
    energy.grad = forces.grad = displaced.grad = None
    PITCLoss(detach_target=True)(energy, forces, displaced, dr, index).sum().backward()
    assert energy.grad is None and forces.grad is None and displaced.grad.abs().sum() > 0


def test_energy_scale_makes_losses_dimensionless():
    index, dr, _, exact = geometries(0.02)
    e, f = exact["s"]
    ed = exact["d"][0] + 2.0
    unit = PITCLoss(energy_scale=1.0)(e, f, ed, dr, index)
    # the same physics in kcal/mol and in eV (1 eV = 23.06 kcal/mol) gives the same loss
    ev = 23.060548
    in_ev = PITCLoss(energy_scale=1.0 / ev)(e / ev, f / ev, ed / ev, dr, index)
    assert torch.allclose(unit, in_ev)


def test_taylor_energy_is_exact_for_a_linear_potential():
    positions, index = random_molecules(SIZES)
    field = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    energy = positions.new_zeros(len(SIZES)).index_add(0, index, positions @ field)
    dr = displacement_of(0.1, len(index))
    shifted = positions + dr
    exact = positions.new_zeros(len(SIZES)).index_add(0, index, shifted @ field)
    forces = -field.expand_as(positions)
    assert torch.allclose(taylor_energy(energy, forces, dr, index), exact)
    assert torch.allclose(morse_energy(positions, index, 3), morse_energy(positions + 0 * dr, index, 3))


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="unknown pointwise loss"):
        PITCLoss("huber")
    with pytest.raises(ValueError, match="energy_scale"):
        PITCLoss(energy_scale=0.0)
    with pytest.raises(ValueError, match="PISC variant"):
        PISCLoss(variant="eq5")
    with pytest.raises(ValueError, match="consistency form"):
        PITCLoss(form="simpson")
    index, dr, _, exact = geometries(0.01)
    with pytest.raises(ValueError, match="forces at the end point"):
        PITCLoss(form="trapezoid")(exact["s"][0], exact["s"][1], exact["d"][0], dr, index)
    with pytest.raises(ValueError, match="margin"):
        pointwise_loss(torch.zeros(1), torch.zeros(1), "relu")


def residuals(form: str, scale: float) -> dict[str, torch.Tensor]:
    """|residual| per structure (kcal/mol) of PITC and each PISC variant on the exact Morse model."""
    index, dr, dr_prime, exact = geometries(scale)
    terms = {"pitc": PITCLoss("mae", form=form)(exact["s"][0], exact["s"][1], exact["d"][0], dr, index, exact["d"][1])}
    for variant in ("eq4", "eq15", "eq16"):
        terms[variant] = PISCLoss("mae", variant=variant, form=form)(*pisc_inputs(exact, dr, dr_prime, index))
    return terms


@pytest.mark.parametrize("form, order", [("taylor", 2.0), ("trapezoid", 3.0)])
def test_residual_of_an_exact_model_has_the_forms_order(form, order):
    """Log-log slope of the residual over 5 step sizes: Taylor O(|dr|^2), trapezoid O(|dr|^3)."""
    scales = [0.04, 0.02, 0.01, 0.005, 0.0025]
    values = [residuals(form, scale) for scale in scales]
    log_scale = torch.log(torch.tensor(scales, dtype=torch.float64))
    for term in values[0]:
        log_residual = torch.stack([v[term] for v in values]).log()  # (scales, structures)
        centred = log_scale - log_scale.mean()
        slopes = (centred.unsqueeze(-1) * (log_residual - log_residual.mean(0))).sum(0) / centred.square().sum()
        assert torch.all((slopes - order).abs() < 0.15), (term, slopes)


def test_trapezoid_is_far_more_accurate_than_taylor_at_the_papers_step():
    taylor, trapezoid = residuals("taylor", 0.05), residuals("trapezoid", 0.05)
    for term in taylor:
        assert torch.all(trapezoid[term] < 0.2 * taylor[term]), (term, taylor[term], trapezoid[term])


def test_path_energy_is_exact_for_a_quadratic_potential_in_the_trapezoid_form():
    """For E = 1/2 k |r|^2 the trapezoid rule is exact, the Taylor form misses by 1/2 k |d|^2."""
    positions, index = random_molecules(SIZES)
    stiffness = 3.0
    energy_of = lambda r: 0.5 * stiffness * r.new_zeros(len(SIZES)).index_add(0, index, r.square().sum(-1))  # noqa: E731
    dr = displacement_of(0.2, len(index))
    exact = energy_of(positions + dr)
    trapezoid = path_energy(
        energy_of(positions), -stiffness * positions, dr, index, -stiffness * (positions + dr), "trapezoid"
    )
    taylor = path_energy(energy_of(positions), -stiffness * positions, dr, index)
    assert torch.allclose(trapezoid, exact, rtol=1e-12, atol=1e-12)
    missing = 0.5 * stiffness * dr.new_zeros(len(SIZES)).index_add(0, index, dr.square().sum(-1))
    assert torch.allclose(exact - taylor, missing, rtol=1e-10)


def test_trapezoid_gradients_reach_both_end_points():
    index, dr, dr_prime, exact = geometries(0.02)
    tensors = {k: (e.clone().requires_grad_(True), f.clone().requires_grad_(True)) for k, (e, f) in exact.items()}
    (e, f), (ed, fd), (ep, fp) = tensors["s"], tensors["d"], tensors["p"]
    PITCLoss(form="trapezoid")(e, 1.1 * f, ed, dr, index, fd).sum().backward()
    assert f.grad.abs().sum() > 0 and fd.grad.abs().sum() > 0 and ed.grad.abs().sum() > 0
    f.grad = fd.grad = None
    PITCLoss(form="taylor")(e, 1.1 * f, ed, dr, index, fd).sum().backward()
    assert f.grad.abs().sum() > 0 and fd.grad is None  # the Taylor form ignores F(S + dr)
    for variant, start in (("eq4", fp), ("eq15", f), ("eq16", fd)):
        for t in (f, fd, fp):
            t.grad = None
        pisc = PISCLoss(variant=variant, form="trapezoid")(e, 1.1 * f, ed, fd, ep, fp, dr, dr_prime, index)
        pisc.sum().backward()
        end = fp if variant == "eq16" else fd
        assert start.grad.abs().sum() > 0 and end.grad.abs().sum() > 0, variant


def test_trapezoid_structures_do_not_leak_into_each_other():
    index, dr, dr_prime, exact = geometries(0.02)
    loss = PISCLoss(form="trapezoid")
    reference = loss(*pisc_inputs(exact, dr, dr_prime, index))
    changed = {k: (v[0].clone(), v[1].clone()) for k, v in exact.items()}
    changed["d"][1][index == 0] *= 5  # the end-point forces of the first structure only
    values = loss(*pisc_inputs(changed, dr, dr_prime, index))
    assert values[0] != reference[0]
    assert torch.equal(values[1:], reference[1:])
    pitc = PITCLoss(form="trapezoid")
    before = pitc(exact["s"][0], exact["s"][1], exact["d"][0], dr, index, exact["d"][1])
    after = pitc(exact["s"][0], exact["s"][1], exact["d"][0], dr, index, changed["d"][1])
    assert after[0] != before[0] and torch.equal(after[1:], before[1:])


@pytest.mark.parametrize("form", ["taylor", "trapezoid"])
def test_residuals_do_not_depend_on_a_per_structure_energy_offset(form):
    index, dr, dr_prime, exact = geometries(0.03)
    offset = torch.tensor([-406_000.0, 12.5, 3e4], dtype=torch.float64)
    shifted = {k: (e + offset, f) for k, (e, f) in exact.items()}
    pitc = PITCLoss(form=form)
    args = lambda g: (g["s"][0], g["s"][1], g["d"][0], dr, index, g["d"][1])  # noqa: E731
    assert torch.allclose(pitc(*args(shifted)), pitc(*args(exact)), rtol=1e-6, atol=1e-12)
    for variant in ("eq4", "eq15", "eq16"):
        pisc = PISCLoss(variant=variant, form=form)
        assert torch.allclose(
            pisc(*pisc_inputs(shifted, dr, dr_prime, index)),
            pisc(*pisc_inputs(exact, dr, dr_prime, index)),
            rtol=1e-6,
            atol=1e-12,
        )
