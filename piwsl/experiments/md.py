"""MD stability: run NVE or Langevin dynamics with a model and record energy drift and time to failure.

A trajectory fails at the first step where (a) the energy or a force is not finite, (b) a bond of
the starting structure (atoms closer than 1.2x the sum of their covalent radii) is longer than
``bond_factor`` times its starting length (bond breaking), or (c) two atoms come closer than
``min_distance`` Å (collapse). Energy drift (NVE) is the slope of a least-squares line through
the total energy over the stable part of the trajectory, in kcal/mol/ps; a trajectory with fewer
than 3 recorded points has none (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.data import covalent_radii
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

from piwsl.data.units import EV_TO_KCAL_PER_MOL
from piwsl.experiments.aggregate import MISSING, mean_std

#: Atoms closer than this factor times the sum of their covalent radii are bonded.
BOND_TOLERANCE = 1.2


@dataclass(frozen=True)
class Trajectory:
    """One MD run: times (fs) and energies (kcal/mol) per recorded step, and how it ended."""

    times: np.ndarray
    potential: np.ndarray
    kinetic: np.ndarray
    failed: bool
    reason: str
    time_to_failure: float | None

    @property
    def total(self) -> np.ndarray:
        return self.potential + self.kinetic

    def drift(self) -> float:
        """Slope of the total energy in kcal/mol/ps (least squares; NaN with fewer than 3 points)."""
        if len(self.times) < 3:
            return float("nan")
        return float(np.polyfit(self.times / 1000.0, self.total, 1)[0])


def bonds(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Bonded pairs (M, 2) of ``atoms`` and their lengths (M,) in Å."""
    distances = atoms.get_all_distances()
    radii = covalent_radii[atoms.numbers]
    limit = BOND_TOLERANCE * (radii[:, None] + radii[None, :])
    i, j = np.nonzero(np.triu(distances < limit, k=1))
    return np.stack([i, j], axis=1), distances[i, j]


def failure(atoms: Atoms, pairs: np.ndarray, lengths: np.ndarray, bond_factor: float, min_distance: float) -> str:
    """Why ``atoms`` counts as failed ('' if it does not)."""
    distances = atoms.get_all_distances()
    stretched = distances[pairs[:, 0], pairs[:, 1]] > bond_factor * lengths
    if stretched.any():
        i, j = pairs[np.argmax(stretched)]
        return f"bond {i}-{j} broken ({distances[i, j]:.2f} Å)"
    np.fill_diagonal(distances, np.inf)
    if distances.min() < min_distance:
        return f"atoms closer than {min_distance} Å"
    return ""


def run_md(
    atoms: Atoms,
    calculator: Calculator,
    ensemble: str = "nve",
    temperature: float = 500.0,
    timestep: float = 0.5,
    steps: int = 2000,
    seed: int = 0,
    friction: float = 0.01,
    bond_factor: float = 1.5,
    min_distance: float = 0.6,
    record_every: int = 5,
) -> Trajectory:
    """Run MD from ``atoms`` (velocities drawn at ``temperature`` K, seeded) until ``steps`` or failure.

    Args:
        ensemble: ``nve`` (velocity Verlet) or ``langevin`` (at ``temperature``, ``friction`` per fs).
        timestep: fs.
        bond_factor, min_distance: failure criteria (module docstring).
        record_every: steps between recorded energies.
    """
    atoms = atoms.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    if ensemble == "nve":
        dynamics = VelocityVerlet(atoms, timestep=timestep * units.fs)
    elif ensemble == "langevin":
        dynamics = Langevin(
            atoms,
            timestep=timestep * units.fs,
            temperature_K=temperature,
            friction=friction / units.fs,
            rng=np.random.default_rng(seed + 1),
        )
    else:
        raise ValueError(f"ensemble {ensemble!r}; allowed: nve, langevin")
    pairs, lengths = bonds(atoms)
    times, potential, kinetic = [], [], []
    reason = ""
    for step in range(steps + 1):
        if step > 0:
            dynamics.run(1)
        energy = atoms.get_potential_energy()
        if not np.isfinite(energy) or not np.isfinite(atoms.get_forces()).all():
            reason = "non-finite energy or forces"
        else:
            reason = failure(atoms, pairs, lengths, bond_factor, min_distance)
        if reason:
            break
        if step % record_every == 0:
            times.append(step * timestep)
            potential.append(energy * EV_TO_KCAL_PER_MOL)
            kinetic.append(atoms.get_kinetic_energy() * EV_TO_KCAL_PER_MOL)
    return Trajectory(
        times=np.asarray(times),
        potential=np.asarray(potential),
        kinetic=np.asarray(kinetic),
        failed=bool(reason),
        reason=reason,
        time_to_failure=step * timestep if reason else None,
    )


def stability_row(
    trajectories: list[Trajectory], steps: int, timestep: float, natoms: int, ensemble: str
) -> dict[str, str]:
    """Table cells over the replicas of one model: failures, times (fs) and, for NVE, energy conservation.

    Means ± sample std (ddof = 1) over the replicas that have the value, marked ``(n=k)`` where
    fewer than all: time to failure over the failed ones, |drift| (kcal/mol/ps, and per atom)
    over those with a drift; ``no drift`` counts the replicas too short for one (NaN).
    """
    replicas = len(trajectories)
    failed = [t for t in trajectories if t.failed]
    simulated = [t.time_to_failure if t.failed else steps * timestep for t in trajectories]
    row = {
        "failed": f"{len(failed)}/{replicas}",
        "time to failure (fs)": mean_std([t.time_to_failure for t in failed]).format(0, replicas)
        if failed
        else MISSING,
        "simulated (fs)": mean_std(simulated).format(0),
    }
    if ensemble == "nve":
        drifts = [abs(t.drift()) for t in trajectories if np.isfinite(t.drift())]
        spreads = [float(np.std(t.total)) for t in trajectories if len(t.total) > 1]
        row["|drift| (kcal/mol/ps)"] = mean_std(drifts).format(2, replicas) if drifts else MISSING
        per_atom = [drift / natoms for drift in drifts]
        row["|drift| per atom (kcal/mol/ps)"] = mean_std(per_atom).format(4, replicas) if drifts else MISSING
        row["no drift (too short)"] = str(replicas - len(drifts))
        row["E_tot std in time (kcal/mol)"] = f"{np.mean(spreads):.3f}" if spreads else MISSING
    row["first failure"] = failed[0].reason if failed else ""
    return row
