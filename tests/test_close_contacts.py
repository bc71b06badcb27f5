"""The cell-list ``close_contacts`` flags exactly the structures the all-pairs check flagged, molecules and cells."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from piwsl.displacements import candidate_pairs, close_contacts


def all_pairs_close_contacts(
    positions: Tensor, displacement: Tensor, batch_index: Tensor, natoms: Tensor, cell: Tensor, pbc: Tensor, d: float
) -> Tensor:
    """piwsl's close_contacts before the cell list (commit c369c66): every pair of atoms of a structure."""
    counts = natoms.long()
    starts = torch.cumsum(counts, 0) - counts
    pair_counts = counts * counts
    pair_structure = torch.repeat_interleave(torch.arange(len(counts)), pair_counts)
    local = torch.arange(int(pair_counts.sum())) - torch.repeat_interleave(
        torch.cumsum(pair_counts, 0) - pair_counts, pair_counts
    )
    size = counts[pair_structure]
    first = starts[pair_structure] + local // size
    second = starts[pair_structure] + local % size
    keep = first < second
    first, second, pair_structure = first[keep], second[keep], pair_structure[keep]
    cells = cell.view(-1, 3, 3).to(positions.dtype)
    periodic = pbc.view(-1, 3).bool()
    identity = torch.eye(3, dtype=positions.dtype).expand_as(cells)
    usable = periodic.any(-1).view(-1, 1, 1)
    inverse = torch.linalg.inv(torch.where(usable, cells, identity))

    def pair_distances(coordinates: Tensor) -> Tensor:
        vectors = coordinates[second] - coordinates[first]
        fractional = torch.einsum("pi,pij->pj", vectors, inverse[pair_structure])
        wrap = periodic[pair_structure].to(vectors.dtype)
        fractional = fractional - wrap * torch.round(fractional)
        wrapped = torch.einsum("pj,pji->pi", fractional, torch.where(usable, cells, identity)[pair_structure])
        vectors = torch.where(usable[pair_structure].view(-1, 1), wrapped, vectors)
        return vectors.norm(dim=-1)

    before, after = pair_distances(positions), pair_distances(positions + displacement)
    violation = (after < d) & (before >= d)
    flagged = torch.zeros(len(counts), dtype=torch.bool)
    return flagged.index_put((pair_structure[violation],), torch.ones_like(pair_structure[violation], dtype=torch.bool))


def random_batch(generator: torch.Generator, kinds: list[str], atoms: int = 30) -> tuple[Tensor, ...]:
    """Positions (about 1 Å apart on average, some pairs closer), cells and pbc of one structure per ``kinds``.

    Kinds: ``molecule``, ``cubic`` (periodic, 7 Å), ``triclinic`` (skewed, periodic), ``small`` (a 1.3 Å
    periodic cell: fewer than 3 bins per direction), ``slab`` (periodic in x and y only).
    """
    positions, cells, pbcs, counts = [], [], [], []
    for kind in kinds:
        if kind == "molecule":
            cell, pbc = torch.zeros(3, 3), [False] * 3
        elif kind == "cubic":
            cell, pbc = 7 * torch.eye(3), [True] * 3
        elif kind == "triclinic":
            cell, pbc = torch.tensor([[6.0, 0, 0], [2.5, 5.5, 0], [-1.5, 1.0, 6.5]]), [True] * 3
        elif kind == "small":
            cell, pbc = torch.tensor([[1.3, 0, 0], [0.4, 1.4, 0], [0.0, 0.3, 1.5]]), [True] * 3
        else:
            cell, pbc = torch.tensor([[5.0, 0, 0], [1.0, 6.0, 0], [0, 0, 20.0]]), [True, True, False]
        count = 3 if kind == "small" else atoms
        box = torch.tensor([6.0, 6.0, 6.0]) if kind == "molecule" else cell.diagonal()
        # Beyond the cell in periodic structures too: the search wraps positions itself.
        positions.append((torch.rand(count, 3, generator=generator) * 1.4 - 0.2) * box)
        cells.append(cell)
        pbcs.append(pbc)
        counts.append(count)
    natoms = torch.tensor(counts)
    batch_index = torch.repeat_interleave(torch.arange(len(kinds)), natoms)
    return torch.cat(positions), batch_index, natoms, torch.stack(cells), torch.tensor(pbcs)


@pytest.mark.parametrize(
    "kinds",
    [["molecule"] * 4, ["cubic", "triclinic"], ["small", "small"], ["slab", "molecule", "triclinic", "small"]],
)
def test_cell_list_flags_the_same_structures_as_all_pairs(kinds):
    generator = torch.Generator().manual_seed(len(kinds))
    flagged_any = clean_any = False
    for trial in range(40):
        positions, batch_index, natoms, cell, pbc = random_batch(generator, kinds)
        scale = 0.05 + 0.1 * (trial % 4)
        displacement = scale * torch.randn(positions.shape, generator=generator)
        for d in (0.3, 0.5, 0.9):
            expected = all_pairs_close_contacts(positions, displacement, batch_index, natoms, cell, pbc, d)
            found = close_contacts(positions, displacement, batch_index, natoms, cell, pbc, d)
            assert found.tolist() == expected.tolist(), (trial, d)
            flagged_any |= bool(expected.any())
            clean_any |= not bool(expected.all())
    assert flagged_any and clean_any  # both outcomes occurred: the comparison is not vacuous


def test_fairchem_pbc_layout_and_float64_positions():
    generator = torch.Generator().manual_seed(7)
    positions, batch_index, natoms, cell, pbc = random_batch(generator, ["triclinic", "molecule", "cubic"])
    displacement = 0.3 * torch.randn(positions.shape, generator=generator)
    expected = all_pairs_close_contacts(positions, displacement, batch_index, natoms, cell, pbc, 0.5)
    flat_pbc = pbc.reshape(-1)  # fairchem's own pipeline stores (3,) per structure
    assert (
        close_contacts(positions, displacement, batch_index, natoms, cell, flat_pbc, 0.5).tolist() == expected.tolist()
    )
    as_double = [t.double() for t in (positions, displacement)]
    expected = all_pairs_close_contacts(*as_double, batch_index, natoms, cell.double(), pbc, 0.5)
    assert close_contacts(*as_double, batch_index, natoms, cell.double(), pbc, 0.5).tolist() == expected.tolist()


def test_candidate_pairs_include_every_pair_within_the_radius_through_periodic_images():
    generator = torch.Generator().manual_seed(3)
    positions, batch_index, natoms, cell, pbc = random_batch(generator, ["triclinic", "small", "molecule", "slab"])
    periodic = pbc.bool()
    frames = torch.where(periodic.any(-1).view(-1, 1, 1), cell, torch.eye(3).expand_as(cell))
    first, second = candidate_pairs(positions, batch_index, torch.linalg.inv(frames), periodic, 1.0)
    found = set(zip(first.tolist(), second.tolist(), strict=True))
    assert len(found) == first.numel() and all(i < j for i, j in found)
    assert all(batch_index[i] == batch_index[j] for i, j in found)
    images = torch.cartesian_prod(*[torch.arange(-2, 3)] * 3).float()
    within = set()
    for i in range(positions.shape[0]):
        for j in range(i + 1, positions.shape[0]):
            s = int(batch_index[i])
            if s != int(batch_index[j]):
                continue
            shifts = (images * periodic[s]) @ frames[s] if periodic[s].any() else torch.zeros(1, 3)
            if (positions[j] + shifts - positions[i]).norm(dim=-1).min() < 1.0:
                within.add((i, j))
    assert within and within <= found
    assert len(found) < 0.5 * sum(int(n) * (int(n) - 1) // 2 for n in natoms)  # far fewer than all pairs


def test_no_pairs_and_no_check():
    one_atom = torch.zeros(1, 3)
    args = (torch.zeros(1, dtype=torch.long), torch.tensor([1]), torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=bool))
    assert close_contacts(one_atom, one_atom, *args, 0.5).tolist() == [False]
    two = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    args = (torch.zeros(2, dtype=torch.long), torch.tensor([2]), torch.zeros(1, 3, 3), torch.zeros(1, 3, dtype=bool))
    toward = torch.tensor([[0.45, 0, 0], [-0.45, 0, 0]])
    assert close_contacts(two, toward, *args, 0.5).tolist() == [True]
    assert close_contacts(two, toward, *args, 0.0).tolist() == [False]
