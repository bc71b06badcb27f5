"""Neighbour-list truncation by fairchem's max_neighbors cap, on real periodic TiO2 cells (GFN1-xTB)."""

from __future__ import annotations

import logging
from pathlib import Path

import ase.io
import pytest
import torch

from piwsl.displacements import RandomDisplacementSampler
from piwsl.neighbours import (
    atoms_to_batch,
    cap_changes_graph,
    neighbour_counts,
    neighbour_truncation,
    warn_if_truncated,
)

TIO2 = Path(__file__).parent / "data/tio2_gfn1xtb.extxyz"


@pytest.fixture(scope="module")
def cells():
    return atoms_to_batch(ase.io.read(TIO2, index=":2"))


def brute_force_counts(atoms, cutoff: float) -> list[int]:
    """Neighbours within ``cutoff`` of each atom over the periodic images, by ASE's neighbour list."""
    from ase.neighborlist import neighbor_list

    centres = neighbor_list("i", atoms, cutoff)
    return torch.bincount(torch.tensor(centres), minlength=len(atoms)).tolist()


def test_counts_match_ases_periodic_neighbour_list(cells):
    atoms = ase.io.read(TIO2, index=":2")
    counts = neighbour_counts(cells, 6.0)
    assert counts.tolist() == brute_force_counts(atoms[0], 6.0) + brute_force_counts(atoms[1], 6.0)
    assert int(counts.min()) > 30  # a dense oxide: dozens of neighbours within 6 Å


def test_truncation_is_counted_against_the_cap(cells):
    counts = neighbour_counts(cells, 6.0)
    capped = neighbour_truncation(cells, 6.0, 40)
    assert capped.truncated_atoms == int((counts > 40).sum()) > 0
    assert capped.largest_neighbour_count == int(counts.max())
    assert neighbour_truncation(cells, 6.0, int(counts.max())).truncated_atoms == 0


def test_displacements_swap_kept_neighbours_only_under_a_truncating_cap(cells):
    sampler = RandomDisplacementSampler(0.05, seed=0)
    displacement = sampler.sample(cells.batch, int(cells.natoms.numel()), dtype=cells.pos.dtype)
    largest = neighbour_truncation(cells, 6.0, 1).largest_neighbour_count
    assert cap_changes_graph(cells, displacement, 6.0, 20).all()  # 20 of ~60 neighbours: every cell changes
    assert not cap_changes_graph(cells, displacement, 6.0, largest).any()  # no truncation, no swap
    assert not cap_changes_graph(cells, torch.zeros_like(displacement), 6.0, 20).any()


def test_start_up_warning_names_the_cap_and_what_to_do(cells, caplog):
    records = cells.to_data_list()
    model = torch.nn.Module()
    model.cutoff, model.max_neighbors = 6.0, 20
    with caplog.at_level(logging.WARNING):
        result = warn_if_truncated(records, model)
    assert result is not None and result.truncated_atoms == result.atoms
    assert "max_neighbors = 20 truncates" in caplog.text and "raise model.max_neighbors" in caplog.text
    caplog.clear()
    model.max_neighbors = result.largest_neighbour_count
    with caplog.at_level(logging.WARNING):
        assert warn_if_truncated(records, model).truncated_atoms == 0
    assert "truncates" not in caplog.text
