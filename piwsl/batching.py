"""Assemble several geometries of fairchem batches into one batch of variable-size graphs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch

#: Graph attributes that belong to the original positions; models rebuild them on the fly.
EDGE_KEYS = frozenset(
    {"edge_index", "cell_offsets", "neighbors", "distances", "edge_attr", "edge_distance", "edge_distance_vec"}
)
_REBUILT_KEYS = EDGE_KEYS | {"batch", "ptr", "pos"}


def _per_structure_or_atom(batch: Batch, key: str) -> str | None:
    """``'structure'``, ``'atom'`` or ``None`` (not a per-item field) for one attribute of ``batch``."""
    value = batch[key]
    num_structures, num_atoms = int(batch.natoms.numel()), int(batch.pos.shape[0])
    if isinstance(value, Tensor) and value.dim() > 0:
        if value.shape[0] == num_atoms:
            return "atom"
        if value.shape[0] == num_structures:
            return "structure"
    elif isinstance(value, list) and len(value) == num_structures:
        return "structure"
    return None


def select_structures(batch: Batch, structures: Tensor) -> Batch:
    """The sub-batch of the structures with (sorted) indices ``structures``, without neighbour lists."""
    keep_atom = torch.isin(batch.batch, structures)
    selected = Batch()
    for key in batch.keys():
        if key in _REBUILT_KEYS:
            continue
        level = _per_structure_or_atom(batch, key)
        value = batch[key]
        if level == "atom":
            selected[key] = value[keep_atom]
        elif level == "structure":
            selected[key] = value[structures] if isinstance(value, Tensor) else [value[i] for i in structures.tolist()]
        elif not isinstance(value, (Tensor, list)):
            selected[key] = value
    selected.pos = batch.pos[keep_atom]
    remap = torch.full((int(batch.natoms.numel()),), -1, dtype=torch.long, device=batch.batch.device)
    remap[structures] = torch.arange(structures.numel(), device=batch.batch.device)
    selected.batch = remap[batch.batch[keep_atom]]
    selected.ptr = torch.cat([selected.natoms.new_zeros(1), selected.natoms.cumsum(0)])
    selected._num_graphs = int(structures.numel())
    return selected


def stack_geometries(parts: Sequence[tuple[Batch, Tensor | None]]) -> Batch:
    """One batch holding each ``(batch, displacement)`` part at positions ``batch.pos + displacement``.

    Parts are stored one after another (structures and atoms in order); ``None`` means undisplaced.
    Per-atom and per-structure fields are concatenated; neighbour lists are dropped, so the model
    must build graphs on the fly (``otf_graph: True``). All parts must carry the same fields.
    """
    first = parts[0][0]
    stacked = Batch()
    for key in first.keys():
        if key in _REBUILT_KEYS:
            continue
        level = _per_structure_or_atom(first, key)
        values = [part[key] for part, _ in parts]
        if level is not None and isinstance(values[0], Tensor):
            stacked[key] = torch.cat(values, dim=0)
        elif level is not None:
            stacked[key] = [item for value in values for item in value]
        elif not isinstance(values[0], (Tensor, list)):
            stacked[key] = values[0]
    stacked.pos = torch.cat([part.pos if shift is None else part.pos + shift for part, shift in parts], dim=0)
    offsets = torch.cumsum(torch.tensor([0] + [int(part.natoms.numel()) for part, _ in parts[:-1]]), 0)
    stacked.batch = torch.cat([part.batch + int(offset) for (part, _), offset in zip(parts, offsets, strict=True)])
    stacked.ptr = torch.cat([stacked.natoms.new_zeros(1), stacked.natoms.cumsum(0)])
    stacked._num_graphs = int(stacked.natoms.numel())
    return stacked
