"""Molecular geometries: RDKit conformers from SMILES, ASE G2 molecules, rattles with a distance guard."""

from __future__ import annotations

from difflib import get_close_matches

import numpy as np
from ase import Atoms
from ase.collections import g2
from ase.data import covalent_radii
from rdkit import Chem
from rdkit.Chem import AllChem

from piwsl.datagen.common import InputError


def smiles_conformers(smiles: str, num_confs: int, seed: int) -> list[Atoms]:
    """Embed ``smiles`` with RDKit ETKDGv3 and relax each conformer with MMFF94.

    Returns up to ``num_confs`` ASE molecules (positions in Angstrom) with
    explicit hydrogens, atoms in RDKit's order (heavy atoms first, then
    hydrogens); RDKit may return fewer conformers for rigid molecules.
    Raises ``InputError`` for an unparsable SMILES and ``RuntimeError`` when
    no conformer can be embedded.
    """
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise InputError(f"RDKit cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    conf_ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=num_confs, params=params))
    if not conf_ids:
        raise RuntimeError(f"RDKit could not embed {smiles!r}")
    AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    return [Atoms(numbers=numbers, positions=mol.GetConformer(cid).GetPositions()) for cid in conf_ids]


def g2_geometry(name: str) -> Atoms:
    """The geometry (Angstrom) of molecule ``name`` of ASE's G2 collection, without magnetic moments.

    Raises ``InputError`` naming the closest valid names when ``name`` is not in the collection.
    """
    if name not in g2.names:
        close = get_close_matches(name, g2.names, n=3)
        raise InputError(f"{name!r} is not in ASE's G2 collection" + (f"; did you mean {close}?" if close else ""))
    atoms = g2[name]
    if np.any(atoms.get_initial_magnetic_moments()):
        raise InputError(f"G2 molecule {name!r} is open-shell (it has magnetic moments)")
    atoms.set_initial_magnetic_moments(None)
    return atoms


def canonical_order(atoms: Atoms) -> Atoms:
    """Return ``atoms`` with atoms sorted by atomic number (stable).

    All conformers of one formula then share one ``atomic_numbers`` array.
    """
    return atoms[np.argsort(atoms.numbers, kind="stable")]


def min_distance_ratio(atoms: Atoms) -> float:
    """Return the smallest pair distance divided by the sum of covalent radii."""
    radii = covalent_radii[atoms.numbers]
    ratio = atoms.get_all_distances() / (radii[:, None] + radii[None, :])
    np.fill_diagonal(ratio, np.inf)
    return float(ratio.min())


def rattle(base: Atoms, sigma: float, min_ratio: float, rng: np.random.Generator) -> Atoms:
    """Return a copy of ``base`` with Gaussian noise (std ``sigma`` Angstrom) added.

    Draws are repeated (at most 1000 times) until no pair of atoms is closer
    than ``min_ratio`` times the sum of their covalent radii.
    """
    for _ in range(1000):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
        if min_distance_ratio(atoms) >= min_ratio:
            return atoms
    raise RuntimeError(f"no rattle of {base.get_chemical_formula()} kept distance ratio >= {min_ratio}")
