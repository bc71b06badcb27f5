"""Seeded samplers of atomic displacements ``dr`` (Sec. 4.4, App. B, App. I).

Each structure of a batch gets a magnitude ``dr0 ~ U(0, max_displacement)`` (Å) and a direction
per atom. Two conventions turn them into displacements:

- ``gaussian`` (App. B, the paper's default): ``dr_i = dr0 * g_i`` with ``g_i ~ N(0, I_3)``, so
  ``dr0`` is the standard deviation of every Cartesian component;
- ``normalized`` (Eq. 6): ``dr = dr0 * g / ||g||_2`` over the whole structure, so the
  structure's displacement has Euclidean norm ``dr0``.

Only moving atoms are displaced: atoms flagged ``fixed`` never are, and each other atom is
displaced with probability ``atom_fraction`` (App. I). All randomness comes from one CPU
``torch.Generator`` seeded at construction, so draws are identical on every device; its state is
exposed through ``state_dict`` for checkpoints.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from piwsl.losses import per_structure_sum

DisplacementForm = Literal["gaussian", "normalized"]

_TINY = 1e-12


class DisplacementSampler:
    """Shared magnitude, masking and scaling logic of the random and adversarial samplers."""

    def __init__(
        self,
        max_displacement: float,
        form: DisplacementForm = "gaussian",
        atom_fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not max_displacement > 0:
            raise ValueError(f"max_displacement must be > 0 Å, got {max_displacement}")
        if form not in ("gaussian", "normalized"):
            raise ValueError(f"unknown displacement form {form!r}; allowed: 'gaussian', 'normalized'")
        if not 0 < atom_fraction <= 1:
            raise ValueError(f"atom_fraction must lie in (0, 1], got {atom_fraction}")
        self.max_displacement = float(max_displacement)
        self.form = form
        self.atom_fraction = float(atom_fraction)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def _magnitudes(self, num_structures: int) -> Tensor:
        """``dr0 ~ U(0, max_displacement)`` per structure (Å)."""
        return torch.rand(num_structures, generator=self.generator, dtype=torch.float64) * self.max_displacement

    def _moving_atoms(self, num_atoms: int, fixed: Tensor | None) -> Tensor:
        """Boolean mask (N,) of atoms to displace: not fixed, and kept with probability ``atom_fraction``."""
        moving = torch.ones(num_atoms, dtype=torch.bool)
        if self.atom_fraction < 1:
            moving &= torch.rand(num_atoms, generator=self.generator) < self.atom_fraction
        if fixed is not None:
            moving &= ~fixed.detach().cpu().bool()
        return moving

    def _scale(self, direction: Tensor, moving: Tensor, batch_index: Tensor, magnitudes: Tensor) -> Tensor:
        """Zero the non-moving atoms and scale ``direction`` (N, 3) by ``magnitudes`` (B,) per ``form``."""
        direction = direction * moving.unsqueeze(-1)
        per_atom_magnitude = magnitudes[batch_index]
        if self.form == "gaussian":
            return direction * per_atom_magnitude.unsqueeze(-1)
        squared_norm = per_structure_sum(direction.square().sum(-1), batch_index, magnitudes.shape[0])
        inverse_norm = squared_norm.clamp_min(_TINY).rsqrt()
        return direction * (per_atom_magnitude * inverse_norm[batch_index]).unsqueeze(-1)


class RandomDisplacementSampler(DisplacementSampler):
    """Zero-mean Gaussian displacement directions (App. B; Eq. 6 with ``form='normalized'``)."""

    def sample(
        self,
        batch_index: Tensor,
        num_structures: int,
        fixed: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw displacements (N, 3) in Å for atoms with structure indices ``batch_index`` (N,)."""
        device = batch_index.device
        cpu_index = batch_index.detach().cpu()
        magnitudes = self._magnitudes(num_structures)
        moving = self._moving_atoms(cpu_index.shape[0], fixed)
        direction = torch.randn(cpu_index.shape[0], 3, generator=self.generator, dtype=torch.float64)
        displacement = self._scale(direction, moving, cpu_index, magnitudes)
        return displacement.to(device=device, dtype=dtype)


class AdversarialDisplacementSampler(DisplacementSampler):
    """Adversarial directions (Eq. 7, 10), rescaled per structure, with a random sign per structure.

    ``direction`` (N, 3) is the gradient of the energy error with respect to positions, e.g.
    ``-sign(E - E_ref) * (F - F_ref)``. It is detached and normalized per structure. In the
    ``gaussian`` form it is rescaled so that ``sum_i |g_i|^2 = 3 n_moving``, the expected squared
    norm of the random Gaussian direction, so that ``max_displacement`` means the same for both.
    """

    def sample(
        self,
        direction: Tensor,
        batch_index: Tensor,
        num_structures: int,
        fixed: Tensor | None = None,
    ) -> Tensor:
        device, dtype = direction.device, direction.dtype
        cpu_index = batch_index.detach().cpu()
        magnitudes = self._magnitudes(num_structures)
        moving = self._moving_atoms(cpu_index.shape[0], fixed)
        signs = torch.randint(0, 2, (num_structures,), generator=self.generator, dtype=torch.float64) * 2 - 1
        direction = direction.detach().cpu().to(torch.float64) * moving.unsqueeze(-1)
        if self.form == "gaussian":
            squared_norm = per_structure_sum(direction.square().sum(-1), cpu_index, num_structures)
            moving_count = per_structure_sum(moving.to(torch.float64), cpu_index, num_structures)
            rescale = (3 * moving_count / squared_norm.clamp_min(_TINY)).sqrt()
            direction = direction * rescale[cpu_index].unsqueeze(-1)
        displacement = self._scale(direction, moving, cpu_index, magnitudes * signs)
        return displacement.to(device=device, dtype=dtype)


def close_contacts(
    positions: Tensor,
    displacement: Tensor,
    batch_index: Tensor,
    natoms: Tensor,
    cell: Tensor,
    pbc: Tensor,
    min_distance: float,
) -> Tensor:
    """Per structure (B,): does ``displacement`` bring two of its atoms closer than ``min_distance`` (Å)?

    Pairs that were already that close before displacing do not count. Periodic structures use the
    minimum-image convention in fractional coordinates (exact for cells wider than twice the
    distance checked). Cost: a cell-list search (``candidate_pairs``) finds the few pairs within
    ``min_distance`` after displacing, in O(N log N); only their distances are computed.
    """
    flagged = torch.zeros(natoms.numel(), dtype=torch.bool, device=positions.device)
    if min_distance <= 0:
        return flagged
    geometry = _PairGeometry(cell, pbc, positions.dtype)
    with torch.no_grad():
        displaced = positions + displacement
        first, second = candidate_pairs(displaced, batch_index, geometry.inverse, geometry.periodic, min_distance)
        pair_structure = batch_index[first]
        before = geometry.distances(positions, first, second, pair_structure)
        after = geometry.distances(displaced, first, second, pair_structure)
    violation = (after < min_distance) & (before >= min_distance)
    return flagged.index_put((pair_structure[violation],), torch.ones_like(pair_structure[violation], dtype=torch.bool))


class _PairGeometry:
    """Distances between atom pairs of a batch, with the minimum image in fractional coordinates for periodic cells."""

    def __init__(self, cell: Tensor, pbc: Tensor, dtype: torch.dtype) -> None:
        cells = cell.view(-1, 3, 3).to(dtype)
        self.periodic = pbc.view(-1, 3).bool()
        self.usable = self.periodic.any(-1).view(-1, 1, 1)
        identity = torch.eye(3, dtype=dtype, device=cells.device).expand_as(cells)
        self.frames = torch.where(self.usable, cells, identity)
        self.inverse = torch.linalg.inv(self.frames)

    def distances(self, coordinates: Tensor, first: Tensor, second: Tensor, pair_structure: Tensor) -> Tensor:
        """|r_second - r_first| (P,) in Å, wrapped to the nearest image along periodic directions."""
        vectors = coordinates[second] - coordinates[first]
        fractional = torch.einsum("pi,pij->pj", vectors, self.inverse[pair_structure])
        wrap = self.periodic[pair_structure].to(vectors.dtype)
        fractional = fractional - wrap * torch.round(fractional)
        wrapped = torch.einsum("pj,pji->pi", fractional, self.frames[pair_structure])
        vectors = torch.where(self.usable[pair_structure].view(-1, 1), wrapped, vectors)
        return vectors.norm(dim=-1)


#: Margin of the cell-list bins over the search radius, Å (float32 rounding of the distances compared).
_BIN_MARGIN = 1e-3
#: The 27 bin offsets of a bin and its neighbours.
_NEIGHBOUR_BINS = torch.cartesian_prod(*[torch.tensor([-1, 0, 1])] * 3)


def candidate_pairs(
    positions: Tensor, batch_index: Tensor, inverse: Tensor, periodic: Tensor, radius: float
) -> tuple[Tensor, Tensor]:
    """Atom pairs ``first < second`` of the same structure that may lie within ``radius`` Å (a superset).

    A cell list: atoms are binned along each lattice direction (Cartesian axes for molecules, whose
    ``inverse`` is the identity) with bins at least ``radius`` wide across; two atoms within
    ``radius`` of each other, at any periodic image, lie in the same or neighbouring bins (modulo
    the bin count along periodic directions). Bins are found by sorting and binary search.

    Args:
        positions: (N, 3) Å; batch_index: (N,) structure of each atom.
        inverse: (B, 3, 3) inverse of each structure's cell (rows are lattice vectors), or the identity.
        periodic: (B, 3) periodic directions.
    """
    device = positions.device
    if positions.shape[0] < 2:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    coordinates = positions.detach().to(torch.float64)
    inverse = inverse.detach().to(torch.float64)
    periodic = periodic.to(device)
    fractional = torch.einsum("ni,nij->nj", coordinates, inverse[batch_index])
    # Two atoms |dx| apart differ in fractional coordinate k by at most |dx| * |column k of inverse|.
    width = (radius + _BIN_MARGIN) * inverse.norm(dim=1)
    counts = torch.where(periodic, torch.floor(1 / width).clamp_min(1), torch.ones_like(width)).long()
    atom_counts, atom_periodic = counts[batch_index], periodic[batch_index]
    wrapped_bins = torch.floor(torch.remainder(fractional, 1.0) * atom_counts).long().clamp(max=atom_counts - 1)
    open_bins = torch.floor(fractional / width[batch_index]).long()
    bins = torch.where(atom_periodic, wrapped_bins, open_bins)
    lowest = bins.min(0).values - 1
    span = bins.max(0).values - lowest + 2
    if (int(batch_index.max()) + 1) * int(span.prod()) >= 2**62:
        raise ValueError(f"positions span {span.tolist()} bins of {radius} Å: too far apart for a cell list")

    def keys(bin_indices: Tensor, structures: Tensor) -> Tensor:
        shifted = bin_indices - lowest
        return ((structures * span[0] + shifted[..., 0]) * span[1] + shifted[..., 1]) * span[2] + shifted[..., 2]

    atom_keys = keys(bins, batch_index)
    sorted_keys, order = torch.sort(atom_keys)
    neighbour_bins = bins.unsqueeze(1) + _NEIGHBOUR_BINS.to(device).unsqueeze(0)
    neighbour_bins = torch.where(
        atom_periodic.unsqueeze(1), torch.remainder(neighbour_bins, atom_counts.unsqueeze(1)), neighbour_bins
    )
    neighbour_keys = keys(neighbour_bins, batch_index.unsqueeze(1)).reshape(-1)
    starts = torch.searchsorted(sorted_keys, neighbour_keys)
    sizes = torch.searchsorted(sorted_keys, neighbour_keys, right=True) - starts
    owner = torch.repeat_interleave(torch.arange(neighbour_keys.numel(), device=device), sizes)
    offset = torch.arange(owner.numel(), device=device) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    first = owner // _NEIGHBOUR_BINS.shape[0]
    second = order[starts[owner] + offset]
    keep = first < second
    # Few bins along a periodic direction make neighbouring bins coincide: count each pair once.
    unique = torch.unique(first[keep] * positions.shape[0] + second[keep])
    return unique // positions.shape[0], unique % positions.shape[0]
