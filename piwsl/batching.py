"""Select structures of a fairchem batch, or stack several geometries of batches into one batch.

Every field of the batch travels, whatever its layout: per-atom fields (``pos``, ``forces``,
``tags``), per-structure fields (``energy``, ``cell`` (B, 3, 3)), and fields with several rows per
structure, such as ``pbc`` as fairchem's ``AtomsToGraphs`` and ``ase_db``/``ase_read`` datasets
store it: shape ``(3,)`` per structure, so ``(3B,)`` in a batch. Each field's rows per structure
come from the slice table PyG keeps for a collated batch (``Batch._slice_dict``); a batch built by
hand, without that table, falls back to matching the leading dimension with the number of atoms
or structures. Neighbour lists are dropped: models rebuild them (``otf_graph: True``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch

#: Graph attributes that belong to the original positions; models rebuild them on the fly.
EDGE_KEYS = frozenset(
    {"edge_index", "cell_offsets", "neighbors", "distances", "edge_attr", "edge_distance", "edge_distance_vec"}
)
_REBUILT_KEYS = EDGE_KEYS | {"batch", "ptr", "pos"}


class BatchLayoutError(ValueError):
    """A batch field whose rows cannot be assigned to structures."""


def _bounds_of(batch: Batch, key: str, value: object) -> tuple[int, ...] | None:
    """Row boundaries (along the concatenation dimension) of each structure's part of ``value``: (B + 1,).

    ``None`` marks a batch-wide value (neither per atom nor per structure), which is copied as is.
    """
    slices = getattr(batch, "_slice_dict", None) or {}
    bounds = slices.get(key)
    if isinstance(bounds, Tensor):
        return tuple(bounds.tolist())
    num_structures, num_atoms = int(batch.natoms.numel()), int(batch.pos.shape[0])
    if isinstance(value, Tensor) and value.dim() > 0:
        if value.shape[0] == num_atoms:
            return (0, *itertools.accumulate(batch.natoms.tolist()))
        if value.shape[0] == num_structures:
            return tuple(range(num_structures + 1))
    elif isinstance(value, list) and len(value) == num_structures:
        return tuple(range(num_structures + 1))
    return None


def _rows(batch: Batch, key: str, value: Tensor, total: int) -> tuple[Tensor, int]:
    """``value`` with its rows along its concatenation dimension, and that dimension.

    A model may reshape a field in place: fairchem's ``radius_graph_pbc`` turns ``pbc`` (3B,) into
    (1, 3B). Such a field is read back with ``total`` rows, as it was collated.
    """
    dim = batch.__cat_dim__(key, value) if value.dim() > 0 else 0
    dim = dim % value.dim() if value.dim() > 0 else 0
    if value.dim() > 0 and value.shape[dim] == total:
        return value, dim
    if dim == 0 and total > 0 and value.numel() % total == 0:
        return (value.reshape(total) if value.numel() == total else value.reshape(total, -1)), 0
    raise BatchLayoutError(f"batch field '{key}' of shape {tuple(value.shape)} does not hold {total} rows")


def _check_not_indices(batch: Batch, key: str) -> None:
    """Fields holding node indices (shifted per structure when collated) cannot be moved between batches.

    PyG shifts only fields whose name contains ``index`` or is ``face`` (``Data.__inc__``).
    """
    if "index" not in key and key != "face":
        return
    increments = (getattr(batch, "_inc_dict", None) or {}).get(key)
    if isinstance(increments, Tensor) and bool(increments.any()):
        raise BatchLayoutError(
            f"batch field '{key}' holds atom indices; piwsl cannot re-index it for displaced copies "
            "(drop it from the data or rebuild it on the fly)"
        )


def _finish(result: Batch, positions: Tensor, batch_index: Tensor, bounds: dict[str, tuple[int, ...]]) -> Batch:
    """Set positions, the graph index, ``ptr`` and PyG's slice tables on a batch assembled field by field."""
    result.pos = positions
    result.batch = batch_index
    result.ptr = torch.cat([result.natoms.new_zeros(1), result.natoms.cumsum(0)])
    num_structures = int(result.natoms.numel())
    result._num_graphs = num_structures
    bounds["pos"] = (0, *itertools.accumulate(result.natoms.tolist()))
    tables: dict[tuple[int, ...], Tensor] = {}
    for value in bounds.values():
        if value not in tables:
            tables[value] = torch.tensor(value, dtype=torch.long)
    result._slice_dict = {key: tables[value] for key, value in bounds.items()}
    no_increments = torch.zeros(num_structures, dtype=torch.long)
    result._inc_dict = dict.fromkeys(bounds, no_increments)
    return result


def select_structures(batch: Batch, structures: Tensor) -> Batch:
    """The sub-batch of the structures with (sorted) indices ``structures``, without neighbour lists."""
    chosen = structures.tolist()
    selected = Batch()
    bounds: dict[str, tuple[int, ...]] = {}
    indices: dict[tuple[int, ...], tuple[list[int], tuple[int, ...]]] = {}
    for key in batch.keys():
        if key in _REBUILT_KEYS:
            continue
        value = batch[key]
        rows = _bounds_of(batch, key, value)
        if rows is None:
            if not isinstance(value, (Tensor, list)):
                selected[key] = value
            continue
        _check_not_indices(batch, key)
        if rows not in indices:
            index = [row for s in chosen for row in range(rows[s], rows[s + 1])]
            counts = [rows[s + 1] - rows[s] for s in chosen]
            indices[rows] = (index, (0, *itertools.accumulate(counts)))
        index, bounds[key] = indices[rows]
        if isinstance(value, Tensor):
            value, dim = _rows(batch, key, value, rows[-1])
            selected[key] = value.index_select(dim, torch.tensor(index, device=value.device))
        else:
            selected[key] = [value[i] for i in index]
    device = batch.batch.device
    chosen_tensor = torch.tensor(chosen, dtype=torch.long, device=device)
    keep_atom = torch.isin(batch.batch, chosen_tensor)
    remap = torch.full((int(batch.natoms.numel()),), -1, dtype=torch.long, device=device)
    remap[chosen_tensor] = torch.arange(len(chosen), device=device)
    return _finish(selected, batch.pos[keep_atom], remap[batch.batch[keep_atom]], bounds)


def stack_geometries(parts: Sequence[tuple[Batch, Tensor | None]]) -> Batch:
    """One batch holding each ``(batch, displacement)`` part at positions ``batch.pos + displacement``.

    Parts are stored one after another (structures and atoms in order); ``None`` means undisplaced.
    Every field is concatenated part after part with its own layout (see the module docstring);
    neighbour lists are dropped, so the model must build graphs on the fly (``otf_graph: True``).
    All parts must carry the same fields.
    """
    first = parts[0][0]
    stacked = Batch()
    bounds: dict[str, tuple[int, ...]] = {}
    joined: dict[tuple[tuple[int, ...], ...], tuple[int, ...]] = {}
    for key in first.keys():
        if key in _REBUILT_KEYS:
            continue
        values = [part[key] for part, _ in parts]
        per_part = [_bounds_of(part, key, value) for (part, _), value in zip(parts, values, strict=True)]
        if per_part[0] is None:
            if not isinstance(values[0], (Tensor, list)):
                stacked[key] = values[0]
            continue
        for part, _ in parts:
            _check_not_indices(part, key)
        if isinstance(values[0], Tensor):
            pieces = [
                _rows(part, key, value, rows[-1])
                for (part, _), value, rows in zip(parts, values, per_part, strict=True)
            ]
            stacked[key] = torch.cat([piece for piece, _ in pieces], dim=pieces[0][1])
        else:
            stacked[key] = [item for value in values for item in value]
        layout = tuple(per_part)
        if layout not in joined:
            rows = [0]
            for part_rows in per_part:
                rows.extend(rows[-1] + row for row in part_rows[1:])
            joined[layout] = tuple(rows)
        bounds[key] = joined[layout]
    positions = torch.cat([part.pos if shift is None else part.pos + shift for part, shift in parts], dim=0)
    offsets = list(itertools.accumulate([0] + [int(part.natoms.numel()) for part, _ in parts[:-1]]))
    batch_index = torch.cat([part.batch + offset for (part, _), offset in zip(parts, offsets, strict=True)])
    return _finish(stacked, positions, batch_index, bounds)
