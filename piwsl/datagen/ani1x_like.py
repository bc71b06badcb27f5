"""Rattled conformers of ~70 small H/C/N/O molecules labelled with GFN2-xTB, in the ANI-1x HDF5 layout."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from ase.collections import g2
from tqdm import tqdm

from piwsl.datagen.common import HARTREE_TO_EV, atomic_write, check_finite
from piwsl.datagen.molecules import canonical_order, rattle, smiles_conformers
from piwsl.datagen.xtb import all_components, finite_difference_error, label, tblite_version

ANI_ELEMENTS = frozenset({"H", "C", "N", "O"})
"""Elements allowed in the ANI-1x-like data set."""

ANI_SMILES = (
    "CCCN",  # propylamine
    "CC(C)N",  # isopropylamine
    "CCNC",  # N-methylethylamine
    "NO",  # hydroxylamine
    "NCCO",  # ethanolamine
    "CCCO",  # 1-propanol
    "OCCO",  # ethylene glycol
    "OCC(O)CO",  # glycerol
    "CCOCC",  # diethyl ether
    "CNC=O",  # N-methylformamide
    "CN(C)C=O",  # N,N-dimethylformamide
    "CC(=O)N(C)C",  # N,N-dimethylacetamide
    "NC(N)=O",  # urea
    "CCOC(=O)N",  # ethyl carbamate
    "CC(=O)OC",  # methyl acetate
    "CCC(=O)O",  # propionic acid
    "C=CC(=O)O",  # acrylic acid
    "OCC(=O)O",  # glycolic acid
    "CC(O)C(=O)O",  # lactic acid
    "OC(=O)C(=O)O",  # oxalic acid
    "NCC(=O)O",  # glycine
    "CC(N)C(=O)O",  # alanine
    "NC(CO)C(=O)O",  # serine
    "NCCC(=O)O",  # beta-alanine
    "CCC#N",  # propionitrile
    "CCCC=O",  # butanal
    "CC(=O)CC",  # butanone
    "CC(C)CC",  # isopentane
    "C1CCCCC1",  # cyclohexane
    "C1CCOC1",  # tetrahydrofuran
    "C1COCCO1",  # 1,4-dioxane
    "C1CCNCC1",  # piperidine
    "C1COCCN1",  # morpholine
    "O=C1CCCN1",  # 2-pyrrolidone
    "c1c[nH]cn1",  # imidazole
    "c1cncnc1",  # pyrimidine
    "c1cnccn1",  # pyrazine
    "Oc1ccccc1",  # phenol
    "Cc1ccc(O)cc1",  # p-cresol
    "Nc1ccccc1",  # aniline
    "O=Cc1ccccc1",  # benzaldehyde
    "Cc1ccccc1",  # toluene
)
"""Extra small H/C/N/O molecules for the ANI-1x-like set, as SMILES."""


@dataclass(frozen=True)
class AniLikeSettings:
    """Settings of the ANI-1x-like set (lengths in Angstrom)."""

    conformers_per_molecule: int = 30
    rdkit_conformers: int = 4
    """RDKit base conformers per SMILES molecule (G2 molecules have one)."""
    max_formulas: int | None = None
    """Keep only this many randomly chosen formulas; None keeps all."""
    rattle_min: float = 0.05
    rattle_max: float = 0.10
    min_distance_ratio: float = 0.65
    seed: int = 0


@dataclass
class Molecule:
    """A named molecule with one or more base geometries (Angstrom)."""

    name: str
    geometries: list[Atoms]

    @property
    def formula(self) -> str:
        """Hill formula, used as the HDF5 group name (e.g. ``C2H6O``)."""
        return self.geometries[0].get_chemical_formula(mode="hill")


def ani_molecules(seed: int, rdkit_confs: int) -> list[Molecule]:
    """Collect closed-shell neutral H/C/N/O molecules with at least 3 atoms.

    Uses ASE's G2 collection (one geometry each) and ``ANI_SMILES`` (up to
    ``rdkit_confs`` RDKit conformers each).
    """
    molecules = []
    for name in g2.names:
        atoms = g2[name]
        closed_shell = atoms.numbers.sum() % 2 == 0 and not np.any(atoms.get_initial_magnetic_moments())
        if len(atoms) >= 3 and set(atoms.get_chemical_symbols()) <= ANI_ELEMENTS and closed_shell:
            atoms.set_initial_magnetic_moments(None)
            molecules.append(Molecule(f"g2:{name}", [canonical_order(atoms)]))
    for smiles in ANI_SMILES:
        confs = smiles_conformers(smiles, rdkit_confs, seed)
        molecules.append(Molecule(f"smiles:{smiles}", [canonical_order(c) for c in confs]))
    return molecules


def generate_ani1x_like(out: Path, settings: AniLikeSettings) -> str:
    """Label rattled conformers with GFN2-xTB and write an ANI-1x-layout HDF5 file to ``out``.

    One group per Hill formula with datasets ``atomic_numbers`` (N,),
    ``coordinates`` (M, N, 3) Angstrom, ``wb97x_dz.energy`` (M,) Hartree and
    ``wb97x_dz.forces`` (M, N, 3) Hartree/Angstrom. The ``wb97x_dz.*`` keys
    hold GFN2-xTB values, as stated in the file and dataset attributes.
    Rattle standard deviations are uniform in [rattle_min, rattle_max].
    Returns a one-line summary.
    """
    start = time.perf_counter()
    method = "GFN2-xTB"
    rng = np.random.default_rng(settings.seed)
    molecules = ani_molecules(settings.seed, settings.rdkit_conformers)
    formulas = sorted({m.formula for m in molecules})
    if settings.max_formulas is not None and settings.max_formulas < len(formulas):
        formulas = sorted(rng.choice(formulas, size=settings.max_formulas, replace=False).tolist())
    molecules = [m for m in molecules if m.formula in formulas]

    jobs = []
    for molecule in molecules:
        for index in range(settings.conformers_per_molecule):
            base = molecule.geometries[index % len(molecule.geometries)]
            sigma = rng.uniform(settings.rattle_min, settings.rattle_max)
            jobs.append((molecule, rattle(base, sigma, settings.min_distance_ratio, rng)))

    groups: dict[str, dict[str, list]] = {
        f: {"coordinates": [], "energy": [], "forces": [], "sources": []} for f in formulas
    }
    failures = 0
    for molecule, atoms in tqdm(jobs, desc="GFN2-xTB labels", unit="conf"):
        try:
            energy, forces = label(atoms, method)
        except CalculationFailed:
            failures += 1
            continue
        group = groups[molecule.formula]
        group["coordinates"].append(atoms.positions.copy())
        group["energy"].append(energy / HARTREE_TO_EV)
        group["forces"].append(forces / HARTREE_TO_EV)
        group["sources"].append(molecule.name)
        group["numbers"] = atoms.numbers
    groups = {f: g for f, g in groups.items() if g["energy"]}

    first = next(iter(groups.values()))
    first_atoms = Atoms(numbers=first["numbers"], positions=first["coordinates"][0])
    first_forces = first["forces"][0] * HARTREE_TO_EV
    fd_error = finite_difference_error(first_atoms, first_forces, method, all_components(len(first_atoms)))
    fd_error /= HARTREE_TO_EV
    wall = time.perf_counter() - start

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["description"] = (
                "ANI-1x release layout filled with GFN2-xTB labels: the keys named "
                "wb97x_dz.* hold GFN2-xTB (tblite) values, NOT wB97x/6-31G(d)."
            )
            h5.attrs["method"] = f"{method} (tblite {tblite_version()})"
            h5.attrs["units"] = "coordinates: Angstrom; energy: Hartree; forces: Hartree/Angstrom"
            h5.attrs["seed"] = settings.seed
            h5.attrs["rattle_sigma_range_angstrom"] = (settings.rattle_min, settings.rattle_max)
            h5.attrs["min_distance_ratio"] = settings.min_distance_ratio
            for formula, group in groups.items():
                out_group = h5.create_group(formula)
                out_group.attrs["sources"] = sorted(set(group["sources"]))
                out_group.create_dataset("atomic_numbers", data=group["numbers"].astype(np.int64))
                out_group.create_dataset("coordinates", data=np.array(group["coordinates"]))
                energy = out_group.create_dataset("wb97x_dz.energy", data=np.array(group["energy"]))
                energy.attrs["method"] = method
                energy.attrs["units"] = "Hartree"
                forces = out_group.create_dataset("wb97x_dz.forces", data=np.array(group["forces"]))
                forces.attrs["method"] = method
                forces.attrs["units"] = "Hartree/Angstrom"
                check_finite(formula, out_group["coordinates"][()], energy[()], forces[()])

    atomic_write(out, write)
    all_energy = np.concatenate([g["energy"] for g in groups.values()])
    return (
        f"wrote {out}: {all_energy.size} conformers in {len(groups)} formulas "
        f"from {len(molecules)} molecules, {failures} SCF failures skipped, "
        f"energies {all_energy.min():.4f} .. {all_energy.max():.4f} Hartree, "
        f"finite-difference force error (first conformer) {fd_error:.2e} Hartree/A, "
        f"wall {wall:.0f} s"
    )
