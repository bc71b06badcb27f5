"""An exactly conservative analytic potential for physics tests: a sum of Morse pair terms."""

from __future__ import annotations

import torch
from torch import Tensor

WELL_DEPTH = 10.0  # kcal/mol
STIFFNESS = 1.0  # 1/Å
EQUILIBRIUM = 1.2  # Å


def morse_energy(positions: Tensor, batch_index: Tensor, num_structures: int) -> Tensor:
    """Sum over pairs within each structure of D (1 - exp(-a (r - r0)))^2 - D; per structure (B,)."""
    same = batch_index.unsqueeze(0) == batch_index.unsqueeze(1)
    upper = torch.triu(torch.ones_like(same), diagonal=1) & same
    i, j = upper.nonzero(as_tuple=True)
    distance = (positions[i] - positions[j]).norm(dim=-1)
    pair = WELL_DEPTH * (1 - torch.exp(-STIFFNESS * (distance - EQUILIBRIUM))).square() - WELL_DEPTH
    return positions.new_zeros(num_structures).index_add(0, batch_index[i], pair)


def morse_energy_and_forces(positions: Tensor, batch_index: Tensor, num_structures: int) -> tuple[Tensor, Tensor]:
    """Energies (B,) and exact forces -dE/dr (N, 3) of the Morse potential."""
    positions = positions.detach().requires_grad_(True)
    energy = morse_energy(positions, batch_index, num_structures)
    (gradient,) = torch.autograd.grad(energy.sum(), positions)
    return energy.detach(), -gradient


def random_molecules(sizes: list[int], seed: int = 0) -> tuple[Tensor, Tensor]:
    """Positions (N, 3) of loosely packed clusters of the given sizes, and their batch index (N,)."""
    generator = torch.Generator().manual_seed(seed)
    positions, index = [], []
    for structure, size in enumerate(sizes):
        grid = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).view(-1, 3)[:size]
        jitter = 0.1 * torch.randn(size, 3, generator=generator, dtype=torch.float64)
        positions.append(grid.double() * 1.3 + jitter)
        index.append(torch.full((size,), structure))
    return torch.cat(positions), torch.cat(index)
