#!/usr/bin/env python
r"""Generate reference data sets for piwsl with GFN-xTB (tblite).

No public data set can be downloaded in the build environment, so this script
creates small, real reference data with semi-empirical quantum chemistry:

* ``aspirin-md``: Langevin MD of a molecule with GFN2-xTB, saved in the
  revised MD17 (rMD17) ``.npz`` layout (kcal/mol, kcal/mol/Angstrom).
* ``ani1x-like``: rattled conformers of small H/C/N/O molecules labelled with
  GFN2-xTB, saved in the ANI-1x release HDF5 layout (Hartree, Hartree/Angstrom).
* ``tio2-xsf``: rattled and strained rutile/anatase supercells labelled with
  periodic GFN1-xTB, saved as aenet XSF files (eV, eV/Angstrom).

Every random choice is drawn from a seeded ``numpy.random.Generator`` and every
output is written to a temporary path next to its destination and then moved
into place with ``os.replace``. Run with ``OMP_NUM_THREADS=1``.

The committed files were made with (from the repository root):

  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py aspirin-md
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py aspirin-md \
      --molecule ethanol --frames 60 --out tests/data/rmd17_ethanol_gfn2xtb.npz
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py ani1x-like
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py ani1x-like \
      --max-formulas 6 --conformers-per-molecule 8 --out tests/data/ani1x_like_small.h5
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py tio2-xsf
  OMP_NUM_THREADS=1 python scripts/generate_reference_data.py tio2-xsf \
      --structures 12 --out tests/data/tio2_xsf

Requires tblite, rdkit, ase (>= 3.29), h5py, numpy and tqdm.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import CalculationFailed
from ase.collections import g2
from ase.constraints import FixCom
from ase.data import covalent_radii
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import (
    Stationary,
    ZeroRotation,
    thermalize_momenta,
)
from ase.optimize import BFGS
from ase.spacegroup import crystal
from rdkit import Chem
from rdkit.Chem import AllChem
from tblite.ase import TBLite
from tqdm import tqdm

EV_TO_KCAL_MOL = 23.060548
"""kcal/mol per eV."""
HARTREE_TO_EV = 27.211386
"""eV per Hartree."""

MD_MOLECULES = {
    "aspirin": "CC(=O)OC1=CC=CC=C1C(=O)O",
    "ethanol": "CCO",
}
"""SMILES of the molecules the ``aspirin-md`` subcommand can simulate."""

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

RUTILE = {"a": 4.594, "c": 2.959, "u": 0.305}
"""Rutile lattice constants (Angstrom) and O Wyckoff parameter u."""
ANATASE = {"a": 3.785, "c": 9.514, "z": 0.208}
"""Anatase lattice constants (Angstrom) and O Wyckoff parameter z."""
TIO2_SUPERCELLS = {
    "rutile": ((2, 2, 2), (2, 2, 3)),
    "anatase": ((2, 2, 1), (3, 2, 1)),
}
"""Supercell repetitions per phase: 48 and 72 atoms for both phases."""


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #


def tblite_version() -> str:
    """Return the installed tblite version string."""
    return version("tblite")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it.

    The temporary file lives in the destination directory so that the final
    ``os.replace`` is atomic; it is removed if ``write`` raises.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def label(atoms: Atoms, method: str) -> tuple[float, np.ndarray]:
    """Return the xTB energy (eV) and forces (eV/Angstrom) of ``atoms``.

    A fresh calculator is used on every call, so each SCF starts from scratch
    and the labels do not depend on the order in which structures are computed.
    """
    atoms = atoms.copy()
    atoms.calc = TBLite(method=method, verbosity=0)
    return float(atoms.get_potential_energy()), atoms.get_forces().copy()


def finite_difference_error(
    atoms: Atoms,
    forces: np.ndarray,
    method: str,
    components: Sequence[tuple[int, int]],
    step: float = 1e-3,
) -> float:
    """Return max |F_stored - F_fd| (eV/Angstrom) over Cartesian components.

    ``forces`` are the stored forces of ``atoms`` in eV/Angstrom.
    ``components`` lists (atom index, axis) pairs; each is displaced by
    +/- ``step`` Angstrom and the force is the central difference of the energy.
    """
    errors = []
    for atom, axis in components:
        energies = []
        for sign in (1.0, -1.0):
            displaced = atoms.copy()
            displaced.positions[atom, axis] += sign * step
            energies.append(label(displaced, method)[0])
        fd_force = -(energies[0] - energies[1]) / (2.0 * step)
        errors.append(abs(fd_force - forces[atom, axis]))
    return float(max(errors))


def all_components(natoms: int) -> list[tuple[int, int]]:
    """Return every (atom index, axis) pair of a structure with ``natoms`` atoms."""
    return [(atom, axis) for atom in range(natoms) for axis in range(3)]


def smiles_conformers(smiles: str, num_confs: int, seed: int) -> list[Atoms]:
    """Embed ``smiles`` with RDKit ETKDGv3 and relax each conformer with MMFF94.

    Returns up to ``num_confs`` ASE molecules (positions in Angstrom) with
    explicit hydrogens; RDKit may return fewer conformers for rigid molecules.
    """
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    conf_ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=num_confs, params=params))
    if not conf_ids:
        raise RuntimeError(f"RDKit could not embed {smiles!r}")
    AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    return [Atoms(numbers=numbers, positions=mol.GetConformer(cid).GetPositions()) for cid in conf_ids]


def check_finite(name: str, *arrays: np.ndarray) -> None:
    """Raise ``ValueError`` if any array contains NaN or infinity."""
    for array in arrays:
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: non-finite values in generated data")


# --------------------------------------------------------------------------- #
# aspirin-md: rMD17-style molecular dynamics
# --------------------------------------------------------------------------- #


def run_md(args: argparse.Namespace) -> None:
    """Run GFN2-xTB Langevin MD and write an rMD17-format ``.npz`` file.

    Stored arrays: ``nuclear_charges`` (N,), ``coords`` (M, N, 3) in Angstrom,
    ``energies`` (M,) total GFN2-xTB energy in kcal/mol and ``forces``
    (M, N, 3) in kcal/mol/Angstrom, plus provenance scalars.
    """
    start = time.perf_counter()
    method = "GFN2-xTB"
    rng = np.random.default_rng(args.seed)
    atoms = smiles_conformers(MD_MOLECULES[args.molecule], 1, args.seed)[0]
    # One calculator for the whole trajectory: each SCF restarts from the
    # previous step's wavefunction, which is fast and still deterministic.
    atoms.calc = TBLite(method=method, verbosity=0)
    BFGS(atoms, logfile=None).run(fmax=args.relax_fmax, steps=args.relax_steps)
    print(f"{args.molecule}: relaxed energy {atoms.get_potential_energy():.4f} eV")

    thermalize_momenta(atoms, args.temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(
        atoms,
        timestep=args.timestep_fs * units.fs,
        temperature_K=args.temperature,
        friction=args.friction / units.fs,
        fixcm=False,
        rng=rng,
    )
    with tqdm(total=args.equilibration_steps, desc="equilibration", unit="step") as bar:
        remaining = args.equilibration_steps
        while remaining > 0:
            chunk = min(args.stride, remaining)
            dyn.run(chunk)
            remaining -= chunk
            bar.update(chunk)

    natoms = len(atoms)
    coords = np.empty((args.frames, natoms, 3))
    energies = np.empty(args.frames)
    forces = np.empty((args.frames, natoms, 3))
    temperatures = np.empty(args.frames)
    for frame in tqdm(range(args.frames), desc="production", unit="frame"):
        dyn.run(args.stride)
        coords[frame] = atoms.positions
        energies[frame] = atoms.get_potential_energy() * EV_TO_KCAL_MOL
        forces[frame] = atoms.get_forces(apply_constraint=False) * EV_TO_KCAL_MOL
        temperatures[frame] = atoms.get_temperature()
    check_finite(args.out.name, coords, energies, forces)

    check = args.frames // 2
    check_frame = Atoms(numbers=atoms.numbers, positions=coords[check])
    fd_error = EV_TO_KCAL_MOL * finite_difference_error(
        check_frame, forces[check] / EV_TO_KCAL_MOL, method, all_components(natoms)
    )
    wall = time.perf_counter() - start

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(
                handle,
                nuclear_charges=atoms.numbers.astype(np.int64),
                coords=coords,
                energies=energies,
                forces=forces,
                molecule=np.array(args.molecule),
                smiles=np.array(MD_MOLECULES[args.molecule]),
                method=np.array(f"{method} (tblite {tblite_version()})"),
                units=np.array("coords: Angstrom; energies: kcal/mol; forces: kcal/mol/Angstrom"),
                temperature_K=np.array(args.temperature),
                timestep_fs=np.array(args.timestep_fs),
                friction_per_fs=np.array(args.friction),
                equilibration_steps=np.array(args.equilibration_steps),
                stride=np.array(args.stride),
                seed=np.array(args.seed),
                tblite_version=np.array(tblite_version()),
            )

    atomic_write(args.out, write)
    print(
        f"wrote {args.out}: {args.frames} frames x {natoms} atoms, "
        f"energies {energies.min():.2f} .. {energies.max():.2f} kcal/mol, "
        f"mean T {temperatures.mean():.1f} K, "
        f"max |F| {np.abs(forces).max():.2f} kcal/mol/A, "
        f"finite-difference force error (frame {args.frames // 2}) "
        f"{fd_error:.2e} kcal/mol/A, "
        f"wall {wall:.0f} s"
    )


# --------------------------------------------------------------------------- #
# ani1x-like: rattled small molecules in the ANI-1x HDF5 layout
# --------------------------------------------------------------------------- #


@dataclass
class Molecule:
    """A named molecule with one or more base geometries (Angstrom)."""

    name: str
    geometries: list[Atoms]

    @property
    def formula(self) -> str:
        """Hill formula, used as the HDF5 group name (e.g. ``C2H6O``)."""
        return self.geometries[0].get_chemical_formula(mode="hill")


def canonical_order(atoms: Atoms) -> Atoms:
    """Return ``atoms`` with atoms sorted by atomic number (stable).

    All conformers of one formula then share one ``atomic_numbers`` array.
    """
    return atoms[np.argsort(atoms.numbers, kind="stable")]


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


def run_ani(args: argparse.Namespace) -> None:
    """Label rattled conformers with GFN2-xTB and write an ANI-1x-layout HDF5 file.

    One group per Hill formula with datasets ``atomic_numbers`` (N,),
    ``coordinates`` (M, N, 3) Angstrom, ``wb97x_dz.energy`` (M,) Hartree and
    ``wb97x_dz.forces`` (M, N, 3) Hartree/Angstrom. The ``wb97x_dz.*`` keys
    hold GFN2-xTB values, as stated in the file and dataset attributes.
    """
    start = time.perf_counter()
    method = "GFN2-xTB"
    rng = np.random.default_rng(args.seed)
    molecules = ani_molecules(args.seed, args.rdkit_conformers)
    formulas = sorted({m.formula for m in molecules})
    if args.max_formulas is not None and args.max_formulas < len(formulas):
        formulas = sorted(rng.choice(formulas, size=args.max_formulas, replace=False).tolist())
    molecules = [m for m in molecules if m.formula in formulas]

    jobs = []
    for molecule in molecules:
        for index in range(args.conformers_per_molecule):
            base = molecule.geometries[index % len(molecule.geometries)]
            sigma = rng.uniform(args.rattle_min, args.rattle_max)
            jobs.append((molecule, rattle(base, sigma, args.min_distance_ratio, rng)))

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
            h5.attrs["seed"] = args.seed
            h5.attrs["rattle_sigma_range_angstrom"] = (args.rattle_min, args.rattle_max)
            h5.attrs["min_distance_ratio"] = args.min_distance_ratio
            for formula, group in groups.items():
                out = h5.create_group(formula)
                out.attrs["sources"] = sorted(set(group["sources"]))
                out.create_dataset("atomic_numbers", data=group["numbers"].astype(np.int64))
                out.create_dataset("coordinates", data=np.array(group["coordinates"]))
                energy = out.create_dataset("wb97x_dz.energy", data=np.array(group["energy"]))
                energy.attrs["method"] = method
                energy.attrs["units"] = "Hartree"
                forces = out.create_dataset("wb97x_dz.forces", data=np.array(group["forces"]))
                forces.attrs["method"] = method
                forces.attrs["units"] = "Hartree/Angstrom"
                check_finite(formula, out["coordinates"][()], energy[()], forces[()])

    atomic_write(args.out, write)
    all_energy = np.concatenate([g["energy"] for g in groups.values()])
    print(
        f"wrote {args.out}: {all_energy.size} conformers in {len(groups)} formulas "
        f"from {len(molecules)} molecules, {failures} SCF failures skipped, "
        f"energies {all_energy.min():.4f} .. {all_energy.max():.4f} Hartree, "
        f"finite-difference force error (first conformer) {fd_error:.2e} Hartree/A, "
        f"wall {wall:.0f} s"
    )


# --------------------------------------------------------------------------- #
# tio2-xsf: periodic TiO2 in aenet XSF format
# --------------------------------------------------------------------------- #


def tio2_unit_cell(phase: str) -> Atoms:
    """Return the conventional rutile (6 atoms) or anatase (12 atoms) cell."""
    if phase == "rutile":
        a, c, u = RUTILE["a"], RUTILE["c"], RUTILE["u"]
        return crystal(
            ["Ti", "O"],
            basis=[(0, 0, 0), (u, u, 0)],
            spacegroup=136,
            cellpar=[a, a, c, 90, 90, 90],
        )
    a, c, z = ANATASE["a"], ANATASE["c"], ANATASE["z"]
    return crystal(
        ["Ti", "O"],
        basis=[(0, 0, 0), (0, 0, z)],
        spacegroup=141,
        cellpar=[a, a, c, 90, 90, 90],
    )


def distorted_tio2(rng: np.random.Generator, args: argparse.Namespace) -> tuple[str, Atoms]:
    """Draw a random phase and supercell, then strain and rattle it.

    The strain is a symmetric matrix with entries uniform in
    [-max_strain, max_strain]; atoms are displaced by Gaussian noise whose
    standard deviation (Angstrom) is uniform in [rattle_min, rattle_max].
    """
    phase = str(rng.choice(sorted(TIO2_SUPERCELLS)))
    repeats = TIO2_SUPERCELLS[phase][rng.integers(len(TIO2_SUPERCELLS[phase]))]
    atoms = tio2_unit_cell(phase).repeat(repeats)
    strain = rng.uniform(-args.max_strain, args.max_strain, size=(3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    sigma = rng.uniform(args.rattle_min, args.rattle_max)
    atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
    atoms.wrap()
    return phase, atoms


def label_periodic(atoms: Atoms) -> tuple[float, np.ndarray] | None:
    """Return GFN1-xTB energy (eV) and forces (eV/Angstrom), or None if SCF fails."""
    try:
        return label(atoms, "GFN1-xTB")
    except CalculationFailed:
        return None


def xsf_text(atoms: Atoms, energy: float, forces: np.ndarray) -> str:
    """Format one structure as an aenet XSF file (Angstrom, eV, eV/Angstrom)."""
    lines = [f"# total energy = {energy:.10f} eV", "", "CRYSTAL", "PRIMVEC"]
    lines += [f"  {v[0]:16.10f} {v[1]:16.10f} {v[2]:16.10f}" for v in atoms.cell[:]]
    lines += ["PRIMCOORD", f"{len(atoms)} 1"]
    for symbol, pos, force in zip(atoms.get_chemical_symbols(), atoms.positions, forces, strict=True):
        lines.append(
            f"{symbol:<2s} {pos[0]:16.10f} {pos[1]:16.10f} {pos[2]:16.10f} "
            f"{force[0]:16.10f} {force[1]:16.10f} {force[2]:16.10f}"
        )
    return "\n".join(lines) + "\n"


def run_tio2(args: argparse.Namespace) -> None:
    """Label distorted TiO2 supercells with GFN1-xTB and write one XSF file each.

    The output directory is built next to ``--out`` and swapped into place at
    the end; it also receives a ``provenance.json``. Structures whose SCF does
    not converge are skipped (their index is missing from the file names).
    """
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    structures = [distorted_tio2(rng, args) for _ in range(args.structures)]
    with multiprocessing.Pool(args.workers) as pool:
        results = list(
            tqdm(
                pool.imap(label_periodic, [atoms for _, atoms in structures]),
                total=len(structures),
                desc="GFN1-xTB labels",
                unit="cell",
            )
        )

    labelled = [(atoms, result) for (_, atoms), result in zip(structures, results, strict=True) if result is not None]
    fd_error = None
    if args.fd_components > 0 and labelled:
        atoms, (_, forces) = labelled[0]
        picks = rng.choice(len(atoms) * 3, size=args.fd_components, replace=False)
        fd_error = finite_difference_error(atoms, forces, "GFN1-xTB", [divmod(int(p), 3) for p in picks])
    wall = time.perf_counter() - start

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    energies = []
    try:
        for index, ((phase, atoms), result) in enumerate(zip(structures, results, strict=True)):
            if result is None:
                continue
            energy, forces = result
            check_finite(f"{phase}_{index:04d}", forces, np.array(energy))
            energies.append(energy / len(atoms))
            (tmp_dir / f"{phase}_{index:04d}.xsf").write_text(xsf_text(atoms, energy, forces))
        provenance = {
            "method": f"GFN1-xTB (tblite {tblite_version()}), Gamma point only",
            "units": "positions, cell: Angstrom; total energy: eV; forces: eV/Angstrom",
            "seed": args.seed,
            "structures_requested": args.structures,
            "structures_written": len(energies),
            "scf_failures": args.structures - len(energies),
            "max_strain": args.max_strain,
            "rattle_sigma_range_angstrom": [args.rattle_min, args.rattle_max],
            "rutile": RUTILE,
            "anatase": ANATASE,
            "supercells": TIO2_SUPERCELLS,
        }
        (tmp_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        os.chmod(tmp_dir, 0o755)
        if args.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.old.", dir=args.out.parent))
            os.replace(args.out, old / args.out.name)
            os.replace(tmp_dir, args.out)
            shutil.rmtree(old)
        else:
            os.replace(tmp_dir, args.out)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise

    fd_text = "skipped" if fd_error is None else f"{fd_error:.2e} eV/A ({args.fd_components} components)"
    print(
        f"wrote {args.out}: {len(energies)} structures, "
        f"{args.structures - len(energies)} SCF failures skipped, "
        f"energy per atom {min(energies):.4f} .. {max(energies):.4f} eV, "
        f"finite-difference force error {fd_text}, wall {wall:.0f} s"
    )


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def positive_int(text: str) -> int:
    """Parse an integer >= 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser with one subparser per data set."""
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    md = sub.add_parser(
        "aspirin-md",
        help="GFN2-xTB Langevin MD of aspirin (or ethanol) in rMD17 .npz format",
        description=run_md.__doc__,
        formatter_class=fmt,
    )
    md.add_argument(
        "--molecule",
        choices=sorted(MD_MOLECULES),
        default="aspirin",
        help="molecule to simulate (built from SMILES with RDKit ETKDGv3 + MMFF94)",
    )
    md.add_argument("--frames", type=positive_int, default=1500, help="number of stored frames")
    md.add_argument(
        "--temperature",
        type=float,
        default=500.0,
        help="thermostat and initial-velocity temperature in K",
    )
    md.add_argument("--timestep-fs", type=float, default=0.5, help="MD time step in fs")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs")
    md.add_argument("--stride", type=positive_int, default=10, help="MD steps between stored frames")
    md.add_argument(
        "--equilibration-steps",
        type=int,
        default=2000,
        help="MD steps discarded before the first stored frame",
    )
    md.add_argument(
        "--relax-fmax",
        type=float,
        default=0.05,
        help="force threshold (eV/Angstrom) of the initial GFN2-xTB BFGS relaxation",
    )
    md.add_argument(
        "--relax-steps",
        type=int,
        default=200,
        help="maximum BFGS steps of the initial relaxation",
    )
    md.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for RDKit embedding, initial velocities and Langevin noise",
    )
    md.add_argument(
        "--out",
        type=Path,
        default=Path("data/rmd17_aspirin_gfn2xtb_500K.npz"),
        help="output .npz path",
    )
    md.set_defaults(func=run_md)

    ani = sub.add_parser(
        "ani1x-like",
        help="rattled small H/C/N/O molecules labelled by GFN2-xTB, ANI-1x HDF5 layout",
        description=run_ani.__doc__,
        formatter_class=fmt,
    )
    ani.add_argument(
        "--conformers-per-molecule",
        type=positive_int,
        default=30,
        help="rattled conformers generated per molecule",
    )
    ani.add_argument(
        "--rdkit-conformers",
        type=positive_int,
        default=4,
        help="RDKit base conformers per SMILES molecule (G2 molecules have one)",
    )
    ani.add_argument(
        "--max-formulas",
        type=positive_int,
        default=None,
        help="keep only this many randomly chosen formulas; None keeps all",
    )
    ani.add_argument(
        "--rattle-min",
        type=float,
        default=0.05,
        help="smallest Gaussian rattle standard deviation in Angstrom",
    )
    ani.add_argument(
        "--rattle-max",
        type=float,
        default=0.10,
        help="largest Gaussian rattle standard deviation in Angstrom",
    )
    ani.add_argument(
        "--min-distance-ratio",
        type=float,
        default=0.65,
        help="redraw a rattle if two atoms are closer than this fraction of their covalent-radius sum",
    )
    ani.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for RDKit embedding, formula choice and rattling",
    )
    ani.add_argument(
        "--out",
        type=Path,
        default=Path("data/ani1x_like_gfn2xtb.h5"),
        help="output HDF5 path",
    )
    ani.set_defaults(func=run_ani)

    tio2 = sub.add_parser(
        "tio2-xsf",
        help="strained/rattled rutile and anatase cells, GFN1-xTB labels, aenet XSF",
        description=run_tio2.__doc__,
        formatter_class=fmt,
    )
    tio2.add_argument(
        "--structures",
        type=positive_int,
        default=150,
        help="number of structures to generate",
    )
    tio2.add_argument(
        "--max-strain",
        type=float,
        default=0.04,
        help="largest absolute strain-tensor component",
    )
    tio2.add_argument(
        "--rattle-min",
        type=float,
        default=0.03,
        help="smallest Gaussian rattle standard deviation in Angstrom",
    )
    tio2.add_argument(
        "--rattle-max",
        type=float,
        default=0.12,
        help="largest Gaussian rattle standard deviation in Angstrom",
    )
    tio2.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="worker processes for the GFN1-xTB calculations",
    )
    tio2.add_argument(
        "--fd-components",
        type=int,
        default=4,
        help="force components of the first labelled structure checked by finite differences (0: none)",
    )
    tio2.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for phase, supercell, strain and rattle choices",
    )
    tio2.add_argument(
        "--out",
        type=Path,
        default=Path("data/tio2_gfn1xtb_xsf"),
        help="output directory of .xsf files",
    )
    tio2.set_defaults(func=run_tio2)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the chosen generator."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
