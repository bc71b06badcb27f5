"""Physics-informed consistency losses (PITC, PISC and variants) and Cooper et al.'s weak labels.

Every function here works on flat, variable-size batches in fairchem's layout: per-structure
energies of shape ``(B,)``, per-atom forces and displacements of shape ``(N, 3)`` and a
``batch_index`` of shape ``(N,)`` mapping each atom to its structure. Energies are in the data
set's physical unit (e.g. kcal/mol), forces in that unit per Å and displacements in Å, so that
the first-order Taylor term ``sum_i <dr_i, F_i>`` is an energy. Residuals are divided by
``energy_scale`` (the energy normalizer's standard deviation) before the pointwise loss, which
makes the loss weights dimensionless. All losses return one value per structure; reducing them
over a batch (or over DDP ranks) is the caller's job.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

PointwiseLoss = Literal["mse", "mae", "relu"]
PISCVariant = Literal["eq4", "eq15", "eq16"]


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
    """Common settings: the pointwise loss, the energy scale and the stop-gradient ablation."""

    def __init__(
        self,
        loss: PointwiseLoss = "mse",
        energy_scale: float = 1.0,
        detach_target: bool = False,
    ) -> None:
        super().__init__()
        if loss not in ("mse", "mae", "relu"):
            raise ValueError(f"unknown pointwise loss {loss!r}; allowed: 'mse', 'mae', 'relu'")
        if energy_scale <= 0:
            raise ValueError(f"energy_scale must be positive, got {energy_scale}")
        self.loss = loss
        self.energy_scale = energy_scale
        self.detach_target = detach_target

    def _compare(self, prediction: Tensor, target: Tensor, margin: Tensor | None) -> Tensor:
        if self.detach_target:
            target = target.detach()
        return pointwise_loss(prediction, target, self.loss, self.energy_scale, margin)


class PITCLoss(_ConsistencyLoss):
    """Taylor-expansion consistency (Eq. 3): ``l(E(S+dr), E(S) - sum_i <dr_i, F_i(S)>)`` per structure."""

    def forward(
        self,
        energy: Tensor,
        forces: Tensor,
        energy_displaced: Tensor,
        displacement: Tensor,
        batch_index: Tensor,
    ) -> Tensor:
        target = taylor_energy(energy, forces, displacement, batch_index)
        margin = second_order_margin(energy_displaced, displacement, batch_index) if self.loss == "relu" else None
        return self._compare(energy_displaced, target, margin)


class PISCLoss(_ConsistencyLoss):
    """Spatial consistency between two displacement paths to ``S + dr`` (Eq. 4, 15, 16).

    With ``dr'' = dr - dr'``:

    - ``eq4``: ``l(E(S+dr), E(S+dr') - sum <dr'', F(S+dr')>)`` (default);
    - ``eq15``: ``l(E(S) - sum <dr, F(S)>, E(S+dr') - sum <dr'', F(S+dr')>)``;
    - ``eq16``: ``l(E(S+dr'), E(S+dr) - sum <-dr'', F(S+dr)>)``.
    """

    def __init__(
        self,
        loss: PointwiseLoss = "mse",
        energy_scale: float = 1.0,
        detach_target: bool = False,
        variant: PISCVariant = "eq4",
    ) -> None:
        super().__init__(loss, energy_scale, detach_target)
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
        if self.variant == "eq4":
            prediction = energy_displaced
            target = taylor_energy(energy_displaced_prime, forces_displaced_prime, second_step, batch_index)
            margin_base, margin_step = energy_displaced, second_step
        elif self.variant == "eq15":
            prediction = taylor_energy(energy, forces, displacement, batch_index)
            target = taylor_energy(energy_displaced_prime, forces_displaced_prime, second_step, batch_index)
            margin_base, margin_step = prediction, second_step
        else:
            if forces_displaced is None:
                raise ValueError("PISC variant 'eq16' needs the forces at S + dr")
            prediction = energy_displaced_prime
            target = taylor_energy(energy_displaced, forces_displaced, -second_step, batch_index)
            margin_base, margin_step = energy_displaced_prime, second_step
        margin = second_order_margin(margin_base, margin_step, batch_index) if self.loss == "relu" else None
        return self._compare(prediction, target, margin)


class WeakLabelLoss(_ConsistencyLoss):
    """Cooper et al.'s Taylor weak label (Eq. 9): ``l(E(S+dr), E_ref(S) - sum <dr, F_ref(S)>)``.

    The target is built from reference labels only, so no gradient flows through it.
    """

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
