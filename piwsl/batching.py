"""Copies of a fairchem batch at displaced positions, as one batch of variable-size graphs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch

#: Graph attributes that belong to the original positions; models rebuild them on the fly.
EDGE_KEYS = frozenset(
    {"edge_index", "cell_offsets", "neighbors", "distances", "edge_attr", "edge_distance", "edge_distance_vec"}
)


def stack_displaced_copies(batch: Batch, displacements: Sequence[Tensor | None]) -> Batch:
    """Return one batch holding ``len(displacements)`` copies of ``batch``.

    Copy ``k`` has positions ``batch.pos + displacements[k]`` (``None``: undisplaced) and is
    stored as structures ``k*B .. (k+1)*B - 1``. Per-atom and per-structure tensors are repeated;
    neighbour lists are dropped, so the model must build graphs on the fly (``otf_graph: True``).
    """
    copies = len(displacements)
    num_structures = int(batch.natoms.numel())
    num_atoms = int(batch.pos.shape[0])
    stacked = Batch()
    for key in batch.keys():
        value = batch[key]
        if key in EDGE_KEYS or key in ("batch", "ptr", "pos"):
            continue
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] in (num_atoms, num_structures):
            stacked[key] = torch.cat([value] * copies, dim=0)
        elif isinstance(value, list) and len(value) == num_structures:
            stacked[key] = value * copies
        elif not isinstance(value, (Tensor, list)):
            stacked[key] = value
    stacked.pos = torch.cat([batch.pos if shift is None else batch.pos + shift for shift in displacements], dim=0)
    offsets = torch.arange(copies, device=batch.batch.device).repeat_interleave(num_atoms) * num_structures
    stacked.batch = batch.batch.repeat(copies) + offsets
    counts = torch.cat([batch.natoms] * copies)
    stacked.ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    stacked._num_graphs = num_structures * copies
    return stacked


def split_copies(values: Tensor, copies: int) -> tuple[Tensor, ...]:
    """Split a tensor stacked over ``copies`` equal blocks (per-structure or per-atom) into the blocks."""
    return values.chunk(copies, dim=0)
