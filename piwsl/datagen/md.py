"""Langevin MD of one molecule with GFN2-xTB, saved in the revised MD17 (rMD17) ``.npz`` layout.

Any molecule works: give a SMILES (embedded with RDKit ETKDGv3 + MMFF94) or a name of ASE's G2
collection. For example, Ac-Ala3-NHMe (42 atoms)::

    from piwsl.datagen.md import MDSettings, generate_md
    generate_md(Path("ac_ala3_nhme.npz"), "ac_ala3_nhme", MDSettings(frames=500),
                smiles="CC(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)NC")

``md_trajectory`` runs the simulation on any ``ase.Atoms`` without writing anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.optimize import BFGS
from tblite.ase import TBLite
from tqdm import tqdm

from piwsl.datagen.common import EV_TO_KCAL_MOL, InputError, atomic_write, check_finite
from piwsl.datagen.molecules import g2_geometry, smiles_conformers
from piwsl.datagen.xtb import all_components, finite_difference_error, tblite_version

MD_MOLECULES = {
    "aspirin": "CC(=O)OC1=CC=CC=C1C(=O)O",
    "ethanol": "CCO",
    "ac_ala3_nhme": "CC(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)N[C@@H](C)C(=O)NC",
}
"""SMILES of the molecules known by name (``--molecule``); Ac-Ala3-NHMe (42 atoms) is MD22's smallest."""


@dataclass(frozen=True)
class MDSettings:
    """Settings of one Langevin trajectory (units in the field names; times in fs, temperature in K)."""

    frames: int = 1500
    temperature: float = 500.0
    timestep_fs: float = 0.5
    friction: float = 0.01
    """Langevin friction in 1/fs."""
    stride: int = 10
    """MD steps between stored frames."""
    equilibration_steps: int = 2000
    relax_fmax: float = 0.05
    """Force threshold (eV/Angstrom) of the initial BFGS relaxation."""
    relax_steps: int = 200
    seed: int = 0
    """Seed of the RDKit embedding, the initial velocities and the Langevin noise."""
    method: str = "GFN2-xTB"


@dataclass(frozen=True)
class MDTrajectory:
    """Stored frames: ``coords`` (M, N, 3) Angstrom, ``energies`` (M,) kcal/mol, ``forces`` kcal/mol/Angstrom."""

    numbers: np.ndarray
    coords: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    temperatures: np.ndarray
    """Instantaneous kinetic temperature (K) of each stored frame."""


def initial_geometry(smiles: str | None = None, g2_name: str | None = None, seed: int = 0) -> Atoms:
    """The starting geometry (Angstrom) from exactly one of a SMILES (RDKit, ``seed``) or a G2 name."""
    if (smiles is None) == (g2_name is None):
        raise InputError("give exactly one of smiles and g2_name")
    if smiles is not None:
        return smiles_conformers(smiles, 1, seed)[0]
    return g2_geometry(g2_name)


def md_trajectory(atoms: Atoms, settings: MDSettings) -> MDTrajectory:
    """Relax ``atoms`` with BFGS, equilibrate, then store ``settings.frames`` frames every ``stride`` steps.

    Velocities and Langevin noise come from ``numpy.random.default_rng(settings.seed)``; the
    centre of mass is fixed. ``atoms`` is not modified.
    """
    atoms = atoms.copy()
    rng = np.random.default_rng(settings.seed)
    # One calculator for the whole trajectory: each SCF restarts from the
    # previous step's wavefunction, which is fast and still deterministic.
    atoms.calc = TBLite(method=settings.method, verbosity=0)
    BFGS(atoms, logfile=None).run(fmax=settings.relax_fmax, steps=settings.relax_steps)
    tqdm.write(f"relaxed energy {atoms.get_potential_energy():.4f} eV")

    thermalize_momenta(atoms, settings.temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(
        atoms,
        timestep=settings.timestep_fs * units.fs,
        temperature_K=settings.temperature,
        friction=settings.friction / units.fs,
        fixcm=False,
        rng=rng,
    )
    with tqdm(total=settings.equilibration_steps, desc="equilibration", unit="step") as bar:
        remaining = settings.equilibration_steps
        while remaining > 0:
            chunk = min(settings.stride, remaining)
            dyn.run(chunk)
            remaining -= chunk
            bar.update(chunk)

    natoms = len(atoms)
    coords = np.empty((settings.frames, natoms, 3))
    energies = np.empty(settings.frames)
    forces = np.empty((settings.frames, natoms, 3))
    temperatures = np.empty(settings.frames)
    for frame in tqdm(range(settings.frames), desc="production", unit="frame"):
        dyn.run(settings.stride)
        coords[frame] = atoms.positions
        energies[frame] = atoms.get_potential_energy() * EV_TO_KCAL_MOL
        forces[frame] = atoms.get_forces(apply_constraint=False) * EV_TO_KCAL_MOL
        temperatures[frame] = atoms.get_temperature()
    return MDTrajectory(atoms.numbers.copy(), coords, energies, forces, temperatures)


def generate_md(
    out: Path,
    name: str,
    settings: MDSettings,
    smiles: str | None = None,
    g2_name: str | None = None,
) -> str:
    """Simulate one molecule (from ``smiles`` or ``g2_name``) and write an rMD17-format ``.npz`` to ``out``.

    Stored arrays: ``nuclear_charges`` (N,), ``coords`` (M, N, 3) in Angstrom,
    ``energies`` (M,) total energy in kcal/mol and ``forces`` (M, N, 3) in
    kcal/mol/Angstrom, plus provenance scalars (``molecule`` = ``name``, then
    ``smiles`` or ``g2_name``, method, MD settings, seed). The forces of the
    middle frame are checked against finite differences of the energy.
    Returns a one-line summary.
    """
    start = time.perf_counter()
    trajectory = md_trajectory(initial_geometry(smiles, g2_name, settings.seed), settings)
    check_finite(out.name, trajectory.coords, trajectory.energies, trajectory.forces)

    natoms = len(trajectory.numbers)
    check = settings.frames // 2
    check_frame = Atoms(numbers=trajectory.numbers, positions=trajectory.coords[check])
    fd_error = EV_TO_KCAL_MOL * finite_difference_error(
        check_frame, trajectory.forces[check] / EV_TO_KCAL_MOL, settings.method, all_components(natoms)
    )
    wall = time.perf_counter() - start
    identity = {"smiles": np.array(smiles)} if smiles is not None else {"g2_name": np.array(g2_name)}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(
                handle,
                nuclear_charges=trajectory.numbers.astype(np.int64),
                coords=trajectory.coords,
                energies=trajectory.energies,
                forces=trajectory.forces,
                molecule=np.array(name),
                **identity,
                method=np.array(f"{settings.method} (tblite {tblite_version()})"),
                units=np.array("coords: Angstrom; energies: kcal/mol; forces: kcal/mol/Angstrom"),
                temperature_K=np.array(settings.temperature),
                timestep_fs=np.array(settings.timestep_fs),
                friction_per_fs=np.array(settings.friction),
                equilibration_steps=np.array(settings.equilibration_steps),
                stride=np.array(settings.stride),
                seed=np.array(settings.seed),
                tblite_version=np.array(tblite_version()),
            )

    atomic_write(out, write)
    energies, forces = trajectory.energies, trajectory.forces
    return (
        f"wrote {out}: {settings.frames} frames x {natoms} atoms, "
        f"energies {energies.min():.2f} .. {energies.max():.2f} kcal/mol, "
        f"mean T {trajectory.temperatures.mean():.1f} K, "
        f"max |F| {np.abs(forces).max():.2f} kcal/mol/A, "
        f"finite-difference force error (frame {check}) "
        f"{fd_error:.2e} kcal/mol/A, "
        f"wall {wall:.0f} s"
    )
