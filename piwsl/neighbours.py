"""Neighbour lists truncated by a model's ``max_neighbors`` cap, and what displacements do to them.

fairchem keeps at most ``max_neighbors`` neighbours per atom (the nearest ones, ties within 0.01 Å^2
kept unless the cap is strict). Where more atoms lie within the cutoff, as in dense periodic cells
with a long cutoff, a tiny displacement can swap which neighbours are kept: the model's energy then
jumps between ``S`` and ``S + dr`` and the consistency terms compare two different graphs. These
functions measure how often that happens; the trainer warns at start-up when the cap truncates the
training structures' neighbour lists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from fairchem.core.common.utils import radius_graph_pbc
from fairchem.core.datasets import data_list_collater
from torch import Tensor
from torch_geometric.data import Batch, Data

#: A cap no real structure reaches: the neighbour list within the cutoff, untruncated.
NO_CAP = 1_000_000
#: Structures of the training set checked at start-up.
STARTUP_SAMPLE = 32

EdgeSet = set[tuple[int, int, int, int, int]]


@dataclass(frozen=True)
class NeighbourTruncation:
    """How many atoms of some structures have more neighbours within the cutoff than the cap keeps."""

    structures: int
    atoms: int
    truncated_atoms: int
    largest_neighbour_count: int
    cutoff: float
    max_neighbors: int

    @property
    def truncated_fraction(self) -> float:
        return self.truncated_atoms / max(self.atoms, 1)


def atoms_to_batch(structures: list[Atoms]) -> Batch:
    """A fairchem-layout batch (positions, cell, per-structure pbc) of ASE structures."""
    records = []
    for atoms in structures:
        records.append(
            Data(
                pos=torch.tensor(atoms.positions, dtype=torch.float32),
                atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.float32),
                cell=torch.tensor(np.asarray(atoms.cell), dtype=torch.float32).view(1, 3, 3),
                pbc=torch.tensor(atoms.pbc, dtype=torch.bool).view(1, 3),
                natoms=len(atoms),
            )
        )
    return Batch.from_data_list(records)


def _edges(batch: Batch, cutoff: float, max_neighbors: int, strict: bool) -> tuple[Tensor, Tensor]:
    """Edges (2, E) as (neighbour, centre) and their integer cell offsets (E, 3), as fairchem builds them."""
    graph = batch.clone()
    graph.pbc = graph.pbc.reshape(-1, 3)  # fairchem's own pipeline stores (3,) per structure, piwsl (1, 3)
    edge_index, offsets, _ = radius_graph_pbc(graph, cutoff, max_neighbors, strict)
    return edge_index, offsets.round().long()


def neighbour_counts(batch: Batch, cutoff: float) -> Tensor:
    """Number of neighbours (periodic images included) of each atom within ``cutoff`` Å, untruncated."""
    edge_index, _ = _edges(batch, cutoff, NO_CAP, strict=False)
    return torch.bincount(edge_index[1], minlength=batch.pos.shape[0])


def neighbour_truncation(batch: Batch, cutoff: float, max_neighbors: int) -> NeighbourTruncation:
    """Count the atoms whose neighbour list within ``cutoff`` the cap ``max_neighbors`` truncates."""
    counts = neighbour_counts(batch, cutoff)
    return NeighbourTruncation(
        structures=int(batch.natoms.numel()),
        atoms=int(counts.numel()),
        truncated_atoms=int((counts > max_neighbors).sum()),
        largest_neighbour_count=int(counts.max()) if counts.numel() else 0,
        cutoff=cutoff,
        max_neighbors=max_neighbors,
    )


def _edge_set(edge_index: Tensor, offsets: Tensor) -> EdgeSet:
    rows = torch.cat([edge_index.T, offsets], dim=1).tolist()
    return {tuple(row) for row in rows}


def cap_changes_graph(
    batch: Batch, displacement: Tensor, cutoff: float, max_neighbors: int, strict: bool = False
) -> Tensor:
    """Per structure (B,), whether ``S -> S + dr`` changes which neighbours the cap keeps.

    Only pairs within the cutoff at both geometries count: a pair crossing the cutoff changes any
    graph (and smooth cutoff functions make that harmless); a kept/dropped swap by the cap does not
    happen without the cap and makes the model's energy jump.
    """
    displaced = batch.clone()
    displaced.pos = batch.pos + displacement
    capped = [_edge_set(*_edges(b, cutoff, max_neighbors, strict)) for b in (batch, displaced)]
    within = [_edge_set(*_edges(b, cutoff, NO_CAP, strict=False)) for b in (batch, displaced)]
    swapped = (capped[0] ^ capped[1]) & within[0] & within[1]
    changed = torch.zeros(int(batch.natoms.numel()), dtype=torch.bool)
    for _, centre, *_ in swapped:
        changed[int(batch.batch[centre])] = True
    return changed


def warn_if_truncated(structures: Sequence, model: torch.nn.Module) -> NeighbourTruncation | None:
    """Log a warning when ``model``'s ``max_neighbors`` truncates the neighbour lists of ``structures``.

    ``structures`` are fairchem data records (the first ``STARTUP_SAMPLE`` are checked). Returns the
    measurement, or ``None`` for models without a cutoff/cap or records without positions.
    """
    cutoff, cap = getattr(model, "cutoff", None), getattr(model, "max_neighbors", None)
    if cutoff is None or cap is None or len(structures) == 0:
        return None
    sample = [structures[i] for i in range(min(len(structures), STARTUP_SAMPLE))]
    if any(getattr(record, "cell", None) is None or getattr(record, "pbc", None) is None for record in sample):
        return None
    batch = data_list_collater(sample, otf_graph=True)
    result = neighbour_truncation(batch, float(cutoff), int(cap))
    if result.truncated_atoms:
        logging.warning(
            f"model.max_neighbors = {cap} truncates the neighbour lists of {result.truncated_atoms} of "
            f"{result.atoms} atoms ({100 * result.truncated_fraction:.0f}%) in {result.structures} training "
            f"structures (up to {result.largest_neighbour_count} neighbours within the {cutoff} Å cutoff). "
            "A displacement can then swap which neighbours are kept and the energy at S + dr jumps, which "
            "corrupts the consistency terms: raise model.max_neighbors above "
            f"{result.largest_neighbour_count} or lower model.cutoff (scripts/diagnostics/neighbour_cap.py "
            "measures how often it happens)"
        )
    return result
