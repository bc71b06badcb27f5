"""Strained and rattled rutile/anatase TiO2 supercells labelled with periodic GFN1-xTB, as aenet XSF files."""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from ase.spacegroup import crystal
from tqdm import tqdm

from piwsl.datagen.common import atomic_write_dir, check_finite
from piwsl.datagen.xtb import finite_difference_error, label, tblite_version

RUTILE = {"a": 4.594, "c": 2.959, "u": 0.305}
"""Rutile lattice constants (Angstrom) and O Wyckoff parameter u."""
ANATASE = {"a": 3.785, "c": 9.514, "z": 0.208}
"""Anatase lattice constants (Angstrom) and O Wyckoff parameter z."""
TIO2_SUPERCELLS = {
    "rutile": ((2, 2, 2), (2, 2, 3)),
    "anatase": ((2, 2, 1), (3, 2, 1)),
}
"""Supercell repetitions per phase: 48 and 72 atoms for both phases."""


@dataclass(frozen=True)
class TiO2Settings:
    """Settings of the TiO2 set (lengths in Angstrom, strain dimensionless)."""

    structures: int = 150
    max_strain: float = 0.04
    """Largest absolute strain-tensor component."""
    rattle_min: float = 0.03
    rattle_max: float = 0.12
    workers: int = 2
    fd_components: int = 4
    """Force components of the first labelled structure checked by finite differences (0: none)."""
    seed: int = 0


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


def distorted_tio2(rng: np.random.Generator, settings: TiO2Settings) -> tuple[str, Atoms]:
    """Draw a random phase and supercell, then strain and rattle it.

    The strain is a symmetric matrix with entries uniform in
    [-max_strain, max_strain]; atoms are displaced by Gaussian noise whose
    standard deviation (Angstrom) is uniform in [rattle_min, rattle_max].
    """
    phase = str(rng.choice(sorted(TIO2_SUPERCELLS)))
    repeats = TIO2_SUPERCELLS[phase][rng.integers(len(TIO2_SUPERCELLS[phase]))]
    atoms = tio2_unit_cell(phase).repeat(repeats)
    strain = rng.uniform(-settings.max_strain, settings.max_strain, size=(3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    sigma = rng.uniform(settings.rattle_min, settings.rattle_max)
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


def generate_tio2_xsf(out: Path, settings: TiO2Settings) -> str:
    """Label distorted TiO2 supercells with GFN1-xTB and write one XSF file each into directory ``out``.

    The output directory is built next to ``out`` and swapped into place at
    the end; it also receives a ``provenance.json``. Structures whose SCF does
    not converge are skipped (their index is missing from the file names).
    Returns a one-line summary.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    structures = [distorted_tio2(rng, settings) for _ in range(settings.structures)]
    with multiprocessing.Pool(settings.workers) as pool:
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
    if settings.fd_components > 0 and labelled:
        atoms, (_, forces) = labelled[0]
        picks = rng.choice(len(atoms) * 3, size=settings.fd_components, replace=False)
        fd_error = finite_difference_error(atoms, forces, "GFN1-xTB", [divmod(int(p), 3) for p in picks])
    wall = time.perf_counter() - start

    energies = []

    def write(tmp_dir: Path) -> None:
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
            "seed": settings.seed,
            "structures_requested": settings.structures,
            "structures_written": len(energies),
            "scf_failures": settings.structures - len(energies),
            "max_strain": settings.max_strain,
            "rattle_sigma_range_angstrom": [settings.rattle_min, settings.rattle_max],
            "rutile": RUTILE,
            "anatase": ANATASE,
            "supercells": TIO2_SUPERCELLS,
        }
        (tmp_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")

    atomic_write_dir(out, write)
    fd_text = "skipped" if fd_error is None else f"{fd_error:.2e} eV/A ({settings.fd_components} components)"
    return (
        f"wrote {out}: {len(energies)} structures, "
        f"{settings.structures - len(energies)} SCF failures skipped, "
        f"energy per atom {min(energies):.4f} .. {max(energies):.4f} eV, "
        f"finite-difference force error {fd_text}, wall {wall:.0f} s"
    )
