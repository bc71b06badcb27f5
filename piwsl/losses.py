"""Physics-informed consistency losses (PITC, PISC and variants) and Cooper et al.'s weak labels.

Every function here works on flat, variable-size batches in fairchem's layout: per-structure
energies of shape ``(B,)``, per-atom forces and displacements of shape ``(N, 3)`` and a
``batch_index`` of shape ``(N,)`` mapping each atom to its structure. Energies are in the data
set's physical unit (e.g. kcal/mol), forces in that unit per Å and displacements in Å, so that
the first-order Taylor term ``sum_i <dr_i, F_i>`` is an energy. Residuals are divided by
``energy_scale`` (the energy normalizer's standard deviation) before the pointwise loss, which
makes the loss weights dimensionless. All losses return one value per structure; reducing them
over a batch (or over DDP ranks) is the caller's job.

Each consistency term compares energies along a *step* ``d`` from a geometry ``A`` to ``B = A + d``
(``consistency_form``):

- ``taylor`` (the paper's form): ``E(B) ~ E(A) - sum_i <d_i, F_i(A)>``, error ``1/2 d^T H d = O(|d|^2)``,
  whose mean over random directions is ``1/2 |d0|^2 tr H``: a systematic bias towards flat surfaces;
- ``trapezoid``: ``E(B) ~ E(A) - 1/2 sum_i <d_i, F_i(A) + F_i(B)>``, the trapezoid rule for the exact
  path integral ``E(B) - E(A) = -int_0^1 sum_i <d_i, F_i(A + t d)> dt``; error
  ``-(1/12) d^3E/dt^3 = O(|d|^3)``, unbiased at second order.

Residuals are invariant under a per-structure constant added to every energy of that structure, so
callers should pass energies *relative* to a reference (e.g. the normalizer's mean): in float32 a total
energy of -406,000 kcal/mol is resolved only to 1/32 kcal/mol. Eq. 17's ReLU margin is the one
quantity that depends on the energy zero; it is computed from the energies as given.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

PointwiseLoss = Literal["mse", "mae", "relu"]
PISCVariant = Literal["eq4", "eq15", "eq16"]
ConsistencyForm = Literal["taylor", "trapezoid"]
CONSISTENCY_FORMS: tuple[str, ...] = ("taylor", "trapezoid")


def per_structure_sum(values: Tensor, batch_index: Tensor, num_structures: int) -> Tensor:
    """Sum per-atom ``values`` (N,) into per-structure totals (B,)."""
    totals = values.new_zeros(num_structures)
    return totals.index_add(0, batch_index, values)


def first_order_term(displacement: Tensor, forces: Tensor, batch_index: Tensor, num_structures: int) -> Tensor:
    """``sum_i <dr_i, F_i>`` per structure: the work of the forces along the displacement (energy unit)."""
    return per_structure_sum((displacement * forces).sum(dim=-1), batch_index, num_structures)


def taylor_energy(energy: Tensor, forces: Tensor, displacement: Tensor, batch_index: Tensor) -> Tensor:
    """First-order Taylor estimate ``E(S + dr) ~ E(S) - sum_i <dr_i, F_i(S)>`` per structure (Eq. 2)."""
    return energy - first_order_term(displacement, forces, batch_index, energy.shape[0])


def path_energy(
    energy_start: Tensor,
    forces_start: Tensor,
    step: Tensor,
    batch_index: Tensor,
    forces_end: Tensor | None = None,
    form: ConsistencyForm = "taylor",
) -> Tensor:
    """Estimate of ``E(A + d)`` per structure from the energy at ``A`` and forces along the step ``d`` (Å).

    ``taylor``: ``E(A) - sum_i <d_i, F_i(A)>``, error ``O(|d|^2)``;
    ``trapezoid``: ``E(A) - 1/2 sum_i <d_i, F_i(A) + F_i(A + d)>``, error ``O(|d|^3)`` (needs ``forces_end``).
    """
    if form == "taylor":
        return taylor_energy(energy_start, forces_start, step, batch_index)
    if form != "trapezoid":
        raise ValueError(f"unknown consistency form {form!r}; allowed: 'taylor', 'trapezoid'")
    if forces_end is None:
        raise ValueError("consistency form 'trapezoid' needs the forces at the end point of the step")
    return energy_start - first_order_term(step, 0.5 * (forces_start + forces_end), batch_index, energy_start.shape[0])


def pointwise_loss(
    prediction: Tensor,
    target: Tensor,
    kind: PointwiseLoss = "mse",
    energy_scale: float | Tensor = 1.0,
    margin: Tensor | None = None,
) -> Tensor:
    """Pointwise loss between two per-structure energies, after dividing by ``energy_scale``.

    ``mse``: squared residual; ``mae``: absolute residual; ``relu`` (Eq. 17):
    ``ReLU(|residual| - margin)``, zero while the residual is within the second-order ``margin``
    (an energy per structure, required for this kind).
    """
    residual = (prediction - target) / energy_scale
    if kind == "mse":
        return residual.square()
    if kind == "mae":
        return residual.abs()
    if kind == "relu":
        if margin is None:
            raise ValueError("pointwise loss 'relu' needs a per-structure margin (Eq. 17)")
        return torch.relu(residual.abs() - margin / energy_scale)
    raise ValueError(f"unknown pointwise loss {kind!r}; allowed: 'mse', 'mae', 'relu'")


def second_order_margin(energy_displaced: Tensor, displacement: Tensor, batch_index: Tensor) -> Tensor:
    """Eq. 17's tolerance ``|E(S + dr)| * ||dr||^2`` per structure (energy unit times Å^2).

    The paper writes ``E(S + dr) ||dr||^2``; we take the absolute value so that the tolerance of a
    structure with a negative energy is not negative. Its size depends on the energy reference.
    """
    squared_norm = per_structure_sum(displacement.square().sum(dim=-1), batch_index, energy_displaced.shape[0])
    return energy_displaced.abs() * squared_norm


class _ConsistencyLoss(nn.Module):
    """Common settings: the pointwise loss, the energy scale, the stop-gradient ablation and the form."""

    def __init__(
        self,
        loss: PointwiseLoss = "mse",
        energy_scale: float = 1.0,
        detach_target: bool = False,
        form: ConsistencyForm = "taylor",
    ) -> None:
        super().__init__()
        if loss not in ("mse", "mae", "relu"):
            raise ValueError(f"unknown pointwise loss {loss!r}; allowed: 'mse', 'mae', 'relu'")
        if energy_scale <= 0:
            raise ValueError(f"energy_scale must be positive, got {energy_scale}")
        if form not in CONSISTENCY_FORMS:
            raise ValueError(f"unknown consistency form {form!r}; allowed: 'taylor', 'trapezoid'")
        self.loss = loss
        self.energy_scale = energy_scale
        self.detach_target = detach_target
        self.form = form

    def _compare(self, prediction: Tensor, target: Tensor, margin: Tensor | None) -> Tensor:
        if self.detach_target:
            target = target.detach()
        return pointwise_loss(prediction, target, self.loss, self.energy_scale, margin)


class PITCLoss(_ConsistencyLoss):
    """Consistency along ``S -> S + dr`` (Eq. 3) per structure.

    ``taylor``: ``l(E(S+dr), E(S) - sum_i <dr_i, F_i(S)>)``, the paper's form (target error ``O(|dr|^2)``);
    ``trapezoid``: ``l(E(S+dr), E(S) - 1/2 sum_i <dr_i, F_i(S) + F_i(S+dr)>)`` (target error ``O(|dr|^3)``),
    which needs ``forces_displaced``.
    """

    def forward(
        self,
        energy: Tensor,
        forces: Tensor,
        energy_displaced: Tensor,
        displacement: Tensor,
        batch_index: Tensor,
        forces_displaced: Tensor | None = None,
    ) -> Tensor:
        target = path_energy(energy, forces, displacement, batch_index, forces_displaced, self.form)
        margin = second_order_margin(energy_displaced, displacement, batch_index) if self.loss == "relu" else None
        return self._compare(energy_displaced, target, margin)


class PISCLoss(_ConsistencyLoss):
    """Spatial consistency between two displacement paths to ``S + dr`` (Eq. 4, 15, 16).

    With ``dr'' = dr - dr'`` and ``P(X, d)`` the path estimate of ``E(X + d)`` (``path_energy``: Taylor
    ``E(X) - sum <d, F(X)>`` or trapezoid ``E(X) - 1/2 sum <d, F(X) + F(X + d)>``):

    - ``eq4``: ``l(E(S+dr), P(S+dr', dr''))`` (default);
    - ``eq15``: ``l(P(S, dr), P(S+dr', dr''))``;
    - ``eq16``: ``l(E(S+dr'), P(S+dr, -dr''))``.
    """

    def __init__(
        self,
        loss: PointwiseLoss = "mse",
        energy_scale: float = 1.0,
        detach_target: bool = False,
        variant: PISCVariant = "eq4",
        form: ConsistencyForm = "taylor",
    ) -> None:
        super().__init__(loss, energy_scale, detach_target, form)
        if variant not in ("eq4", "eq15", "eq16"):
            raise ValueError(f"unknown PISC variant {variant!r}; allowed: 'eq4', 'eq15', 'eq16'")
        self.variant = variant

    def forward(
        self,
        energy: Tensor,
        forces: Tensor,
        energy_displaced: Tensor,
        forces_displaced: Tensor | None,
        energy_displaced_prime: Tensor,
        forces_displaced_prime: Tensor,
        displacement: Tensor,
        displacement_prime: Tensor,
        batch_index: Tensor,
    ) -> Tensor:
        second_step = displacement - displacement_prime
        needs_end_forces = self.variant == "eq16" or self.form == "trapezoid"
        if needs_end_forces and forces_displaced is None:
            raise ValueError(f"PISC variant {self.variant!r} in the {self.form!r} form needs the forces at S + dr")
        form = self.form
        if self.variant == "eq4":
            prediction = energy_displaced
            target = path_energy(
                energy_displaced_prime, forces_displaced_prime, second_step, batch_index, forces_displaced, form
            )
            margin_base, margin_step = energy_displaced, second_step
        elif self.variant == "eq15":
            prediction = path_energy(energy, forces, displacement, batch_index, forces_displaced, form)
            target = path_energy(
                energy_displaced_prime, forces_displaced_prime, second_step, batch_index, forces_displaced, form
            )
            margin_base, margin_step = prediction, second_step
        else:
            prediction = energy_displaced_prime
            target = path_energy(
                energy_displaced, forces_displaced, -second_step, batch_index, forces_displaced_prime, form
            )
            margin_base, margin_step = energy_displaced_prime, second_step
        margin = second_order_margin(margin_base, margin_step, batch_index) if self.loss == "relu" else None
        return self._compare(prediction, target, margin)


class WeakLabelLoss(_ConsistencyLoss):
    """Cooper et al.'s Taylor weak label (Eq. 9): ``l(E(S+dr), E_ref(S) - sum <dr, F_ref(S)>)``.

    The target is built from reference labels only, so no gradient flows through it. It exists in the
    Taylor form only: a trapezoid target would need reference forces at ``S + dr``, which no data set has
    (mixing in the model's own forces there would make it a PITC term, not a label).
    """

    def __init__(self, loss: PointwiseLoss = "mse", energy_scale: float = 1.0, detach_target: bool = False) -> None:
        super().__init__(loss, energy_scale, detach_target, "taylor")

    def forward(
        self,
        energy_displaced: Tensor,
        energy_reference: Tensor,
        forces_reference: Tensor,
        displacement: Tensor,
        batch_index: Tensor,
    ) -> Tensor:
        target = taylor_energy(energy_reference, forces_reference, displacement, batch_index).detach()
        margin = second_order_margin(energy_displaced, displacement, batch_index) if self.loss == "relu" else None
        return self._compare(energy_displaced, target, margin)
