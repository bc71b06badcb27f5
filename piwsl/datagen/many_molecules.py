"""Thousands of small C/H/N/O molecules, rattled and labelled with GFN2-xTB, in the ANI-1x HDF5 layout.

The paper's ANI-1x regime has tens of thousands of distinct molecules, so that a training set of
1,000 conformations holds mostly different molecules. This generator makes a set of that kind:

1. Molecules: random SELFIES strings over neutral C/N/O tokens (every string decodes to a valid
   molecule), sanitized with RDKit and kept when neutral, closed-shell (no radical electrons), one
   fragment, 1-8 heavy atoms, without O-O bonds (peroxides, and triplet O2) and without triple or
   cumulated double bonds in rings; deduplicated by RDKit canonical SMILES. The list is the first
   ``molecules`` distinct ones of a seeded stream, so a longer list extends a shorter one.
2. Conformations: RDKit ETKDGv3 + MMFF94 base conformers (``base_conformers`` per molecule), each
   rattled with Gaussian noise at the amplitudes ``rattle_sigmas`` (Angstrom, used in turn), with a
   minimum-distance guard (no pair closer than ``min_distance_ratio`` times the covalent-radius sum).
3. Labels: GFN2-xTB energies and forces (tblite), a fresh calculator per conformation. A force
   guard redraws rattles with a force component above ``max_force`` (a pinched bond: the distance
   guard alone lets a C-H bond shrink to 0.7 Angstrom, which gives forces of 30-60 eV/Angstrom).

Every molecule draws its random numbers from ``numpy.random.default_rng([seed, index])``, so its
conformations do not depend on chunking, worker count or on the other molecules.

Resumable: molecules are processed in chunks of ``chunk_size``; each finished chunk is written
atomically to ``work_dir/chunk_NNNNN.npz`` and skipped on a rerun, so a kill loses at most one
chunk. The chunks are merged into the HDF5 file at the end (then the work directory is removed).

Layout (read by ``scripts/prepare_data.py ani1x``): one group per Hill formula with
``atomic_numbers`` (N,), ``coordinates`` (M, N, 3) Angstrom, ``wb97x_dz.energy`` (M,) Hartree,
``wb97x_dz.forces`` (M, N, 3) Hartree/Angstrom (the keys hold GFN2-xTB values, as the attributes
say) and ``smiles`` (M,), the canonical SMILES of each conformation's molecule (its identity for
splits by molecule). The root group ``molecules`` lists every sampled molecule (``smiles``,
``selfies``, ``status``, ``conformers``); the root attribute ``provenance`` (JSON) holds the
settings, seeds, package versions and command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import selfies
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from rdkit import Chem, RDLogger
from tqdm import tqdm

from piwsl.datagen.common import (
    HARTREE_TO_EV,
    InputError,
    atomic_write,
    check_finite,
    command_line,
    package_versions,
)
from piwsl.datagen.molecules import canonical_order, rattle, smiles_conformers
from piwsl.datagen.xtb import all_components, finite_difference_error, label

METHOD = "GFN2-xTB"

SELFIES_TOKENS = {
    "[C]": 6.0,
    "[=C]": 2.0,
    "[#C]": 1.0,
    "[N]": 3.0,
    "[=N]": 1.0,
    "[#N]": 0.5,
    "[O]": 3.0,
    "[=O]": 1.5,
    "[Branch1]": 2.0,
    "[=Branch1]": 1.0,
    "[Ring1]": 1.5,
    "[=Ring1]": 0.5,
}
"""SELFIES tokens of the random strings and their relative weights (neutral C, N, O; branches; rings)."""

HEAVY_ELEMENTS = frozenset({"C", "N", "O"})

MANIFEST = "manifest.json"
"""The work directory's record of the settings its chunks were made with."""

FORCE_GUARD_ATTEMPTS = 10
"""Rattles drawn per conformation before one whose forces stay below ``max_force`` is given up."""

OK = "ok"
"""Status of a molecule whose conformations were labelled."""


@dataclass(frozen=True)
class ManyMoleculeSettings:
    """What the data set holds; every field is recorded in the file (lengths in Angstrom)."""

    molecules: int = 3000
    """Distinct molecules sampled (a few may fail to embed and are listed with their status)."""
    conformers_per_molecule: int = 10
    base_conformers: int = 3
    """RDKit conformers per molecule that the rattles start from (used in turn)."""
    rattle_sigmas: tuple[float, ...] = (0.01, 0.02, 0.04, 0.06)
    """Rattle standard deviations, used in turn: conformer j gets ``rattle_sigmas[j % len]``."""
    min_distance_ratio: float = 0.65
    max_force: float | None = 15.0
    """Largest force component (eV/Angstrom) kept: a rattle with a larger one is redrawn (at most
    ``FORCE_GUARD_ATTEMPTS`` times, then the conformation is left out); ``None`` keeps every label."""
    min_heavy_atoms: int = 1
    max_heavy_atoms: int = 8
    max_selfies_tokens: int = 12
    """Random SELFIES strings have 1..max_selfies_tokens tokens (uniform)."""
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rattle_sigmas", tuple(float(sigma) for sigma in self.rattle_sigmas))
        if self.molecules < 1 or self.conformers_per_molecule < 1 or self.base_conformers < 1:
            raise InputError("molecules, conformers_per_molecule and base_conformers must be >= 1")
        if not self.rattle_sigmas or min(self.rattle_sigmas) < 0:
            raise InputError(f"rattle_sigmas must be one or more amplitudes >= 0 Angstrom, got {self.rattle_sigmas}")
        if self.max_force is not None and self.max_force <= 0:
            raise InputError(f"max_force must be > 0 eV/Angstrom or None, got {self.max_force}")
        if not 1 <= self.min_heavy_atoms <= self.max_heavy_atoms:
            raise InputError(
                f"need 1 <= min_heavy_atoms <= max_heavy_atoms, got {self.min_heavy_atoms}, {self.max_heavy_atoms}"
            )


@dataclass(frozen=True)
class Candidate:
    """A sampled molecule: RDKit canonical SMILES and the SELFIES string it was decoded from."""

    smiles: str
    selfies: str


@dataclass(frozen=True)
class MoleculeConformers:
    """The labelled conformations of one molecule (atoms sorted by atomic number).

    ``coordinates`` (K, N, 3) Angstrom, ``energies`` (K,) Hartree, ``forces`` (K, N, 3) Hartree/Angstrom.
    """

    index: int
    status: str
    numbers: np.ndarray
    coordinates: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    scf_failures: int = 0
    force_redraws: int = 0
    """Rattles redrawn because a force component exceeded ``max_force``."""


def rejection_reason(mol: Chem.Mol, min_heavy: int, max_heavy: int) -> str | None:
    """Why a sanitized RDKit molecule is not kept (``None`` if it is)."""
    heavy = mol.GetNumHeavyAtoms()
    if not min_heavy <= heavy <= max_heavy:
        return "heavy-atom count"
    if len(Chem.GetMolFrags(mol)) != 1:
        return "several fragments"
    for atom in mol.GetAtoms():
        if atom.GetSymbol() not in HEAVY_ELEMENTS:
            return "element"
        if atom.GetFormalCharge() != 0:
            return "charged"
        if atom.GetNumRadicalElectrons() != 0:
            return "open shell"
        double_in_ring = sum(b.GetBondType() == Chem.BondType.DOUBLE and b.IsInRing() for b in atom.GetBonds())
        if double_in_ring > 1:
            return "cumulated double bonds in a ring"
    for bond in mol.GetBonds():
        if bond.GetBeginAtom().GetSymbol() == "O" and bond.GetEndAtom().GetSymbol() == "O":
            return "O-O bond"
        if bond.GetBondType() == Chem.BondType.TRIPLE and bond.IsInRing():
            return "triple bond in a ring"
    return None


def sample_molecules(settings: ManyMoleculeSettings) -> list[Candidate]:
    """The first ``settings.molecules`` distinct accepted molecules of a seeded stream of random SELFIES.

    Raises ``InputError`` if the stream does not yield that many within 1,000 draws per molecule.
    """
    rng = np.random.default_rng(settings.seed)
    tokens = list(SELFIES_TOKENS)
    weights = np.array(list(SELFIES_TOKENS.values()))
    weights /= weights.sum()
    seen: dict[str, Candidate] = {}
    RDLogger.DisableLog("rdApp.*")
    try:
        for _ in range(1000 * settings.molecules):
            if len(seen) == settings.molecules:
                break
            length = int(rng.integers(1, settings.max_selfies_tokens + 1))
            string = "".join(rng.choice(tokens, size=length, p=weights))
            mol = Chem.MolFromSmiles(selfies.decoder(string) or "")
            if mol is None or mol.GetNumAtoms() == 0:
                continue
            if rejection_reason(mol, settings.min_heavy_atoms, settings.max_heavy_atoms) is None:
                smiles = Chem.MolToSmiles(mol)
                seen.setdefault(smiles, Candidate(smiles, string))
    finally:
        RDLogger.EnableLog("rdApp.*")
    if len(seen) < settings.molecules:
        raise InputError(
            f"only {len(seen)} distinct molecules with {settings.min_heavy_atoms}-{settings.max_heavy_atoms} heavy "
            f"atoms found in {1000 * settings.molecules} random SELFIES; ask for fewer molecules"
        )
    return list(seen.values())


def label_molecule(index: int, smiles: str, settings: ManyMoleculeSettings) -> MoleculeConformers:
    """Embed, rattle and label the conformations of molecule ``index`` (random numbers from ``[seed, index]``)."""
    rng = np.random.default_rng([settings.seed, index])
    empty = np.empty((0,))

    def failed(status: str, scf_failures: int = 0, force_redraws: int = 0) -> MoleculeConformers:
        return MoleculeConformers(
            index, status, empty.astype(np.int64), empty, empty, empty, scf_failures, force_redraws
        )

    embed_seed = int(rng.integers(2**31 - 1))
    try:
        bases = [canonical_order(atoms) for atoms in smiles_conformers(smiles, settings.base_conformers, embed_seed)]
    except RuntimeError:
        return failed("embedding failed")
    coordinates, energies, forces = [], [], []
    scf_failures = 0
    force_redraws = 0
    for conformer in range(settings.conformers_per_molecule):
        sigma = settings.rattle_sigmas[conformer % len(settings.rattle_sigmas)]
        for _ in range(FORCE_GUARD_ATTEMPTS):
            try:
                atoms = rattle(bases[conformer % len(bases)], sigma, settings.min_distance_ratio, rng)
            except RuntimeError:
                return failed("distance guard")
            try:
                energy, force = label(atoms, METHOD)
            except CalculationFailed:
                scf_failures += 1
                break
            if settings.max_force is not None and np.abs(force).max() > settings.max_force:
                force_redraws += 1
                continue
            coordinates.append(atoms.positions)
            energies.append(energy / HARTREE_TO_EV)
            forces.append(force / HARTREE_TO_EV)
            break
    if not energies:
        return failed("SCF failed" if scf_failures else "force guard", scf_failures, force_redraws)
    return MoleculeConformers(
        index,
        OK,
        bases[0].numbers.astype(np.int64),
        np.array(coordinates),
        np.array(energies),
        np.array(forces),
        scf_failures,
        force_redraws,
    )


def _label_job(job: tuple[int, str, ManyMoleculeSettings]) -> MoleculeConformers:
    """``label_molecule`` on one ``(index, smiles, settings)`` tuple (for ``Pool.imap``)."""
    return label_molecule(*job)


def _write_chunk(path: Path, results: list[MoleculeConformers]) -> None:
    """Write one chunk's molecules atomically as flat arrays (see ``_read_chunk``)."""
    labelled = [r for r in results if r.status == OK]

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            np.savez(
                handle,
                index=np.array([r.index for r in results], dtype=np.int64),
                status=np.array([r.status for r in results]),
                scf_failures=np.array([r.scf_failures for r in results], dtype=np.int64),
                force_redraws=np.array([r.force_redraws for r in results], dtype=np.int64),
                conformers=np.array([len(r.energies) for r in results], dtype=np.int64),
                natoms=np.array([len(r.numbers) for r in results], dtype=np.int64),
                numbers=np.concatenate([r.numbers for r in labelled] or [np.empty(0, np.int64)]),
                coordinates=np.concatenate([r.coordinates.reshape(-1, 3) for r in labelled] or [np.empty((0, 3))]),
                energies=np.concatenate([r.energies for r in labelled] or [np.empty(0)]),
                forces=np.concatenate([r.forces.reshape(-1, 3) for r in labelled] or [np.empty((0, 3))]),
            )

    atomic_write(path, write)


def _read_chunk(path: Path) -> list[MoleculeConformers]:
    """The molecules of one chunk file written by ``_write_chunk``."""
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    results = []
    atom = row = coordinate = 0
    for index, status, failures, redraws, count, natoms in zip(
        arrays["index"],
        arrays["status"],
        arrays["scf_failures"],
        arrays["force_redraws"],
        arrays["conformers"],
        arrays["natoms"],
        strict=True,
    ):
        count, natoms = int(count), int(natoms)
        rows = slice(coordinate, coordinate + count * natoms)
        results.append(
            MoleculeConformers(
                int(index),
                str(status),
                arrays["numbers"][atom : atom + natoms],
                arrays["coordinates"][rows].reshape(count, natoms, 3),
                arrays["energies"][row : row + count],
                arrays["forces"][rows].reshape(count, natoms, 3),
                int(failures),
                int(redraws),
            )
        )
        atom, row, coordinate = atom + natoms, row + count, coordinate + count * natoms
    return results


def _manifest(settings: ManyMoleculeSettings, chunk_size: int, candidates: list[Candidate]) -> dict[str, Any]:
    """What the chunks of a work directory were made with (compared on resume)."""
    smiles = "\n".join(c.smiles for c in candidates).encode()
    manifest = {
        "settings": dataclasses.asdict(settings),
        "chunk_size": chunk_size,
        "smiles_sha256": hashlib.sha256(smiles).hexdigest(),
    }
    return json.loads(json.dumps(manifest))


def _open_work_dir(work_dir: Path, manifest: dict[str, Any]) -> None:
    """Create ``work_dir`` with its manifest, or check that an existing one was made with the same settings."""
    path = work_dir / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(
            {key for key in manifest["settings"] if old.get("settings", {}).get(key) != manifest["settings"][key]}
            | {key for key in ("chunk_size", "smiles_sha256") if old.get(key) != manifest[key]}
        )
        if changed:
            raise InputError(
                f"{work_dir}: its chunks were made with other settings ({', '.join(changed)}); "
                "rerun with those settings, or remove the directory or pass another --work-dir"
            )
        return
    if work_dir.exists() and any(work_dir.iterdir()):
        raise InputError(f"{work_dir}: exists, is not empty and has no {MANIFEST}; pass another --work-dir")
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))


def _chunk_path(work_dir: Path, chunk: int) -> Path:
    return work_dir / f"chunk_{chunk:05d}.npz"


def generate_many_molecules(
    out: Path,
    settings: ManyMoleculeSettings,
    workers: int = 2,
    chunk_size: int = 100,
    work_dir: Path | None = None,
    stop_after_chunks: int | None = None,
    keep_work_dir: bool = False,
) -> str:
    """Sample, rattle and label ``settings.molecules`` molecules; write the ANI-1x-layout HDF5 file ``out``.

    ``workers`` processes label the molecules of one chunk (``chunk_size`` molecules) at a time;
    finished chunks go to ``work_dir`` (default ``<out>.work``) and are reused on a rerun with the
    same settings. ``stop_after_chunks`` stops after that many new chunks without writing ``out``
    (a time-boxed run; rerun to continue). Returns a one-line summary.
    """
    start = time.perf_counter()
    work_dir = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".work")
    candidates = sample_molecules(settings)
    manifest = _manifest(settings, chunk_size, candidates)
    _open_work_dir(work_dir, manifest)
    chunks = [range(first, min(first + chunk_size, len(candidates))) for first in range(0, len(candidates), chunk_size)]
    todo = [number for number in range(len(chunks)) if not _chunk_path(work_dir, number).exists()]
    done_molecules = len(candidates) - sum(len(chunks[number]) for number in todo)
    if stop_after_chunks is not None:
        todo = todo[:stop_after_chunks]

    # Leaving the pool's context terminates its workers, also on Ctrl-C or an error.
    parallel = workers > 1 and bool(todo)
    with multiprocessing.get_context("fork").Pool(workers) if parallel else nullcontext() as pool:
        with tqdm(total=len(candidates), initial=done_molecules, desc=f"{METHOD} molecules", unit="mol") as bar:
            for number in todo:
                jobs = [(index, candidates[index].smiles, settings) for index in chunks[number]]
                results = []
                for result in pool.imap(_label_job, jobs) if parallel else map(_label_job, jobs):
                    results.append(result)
                    bar.update(1)
                _write_chunk(_chunk_path(work_dir, number), results)
    missing = [number for number in range(len(chunks)) if not _chunk_path(work_dir, number).exists()]
    if missing:
        return f"stopped with {len(missing)} of {len(chunks)} chunks left in {work_dir}; rerun the command to continue"

    results = [result for number in range(len(chunks)) for result in _read_chunk(_chunk_path(work_dir, number))]
    summary = _write_h5(out, settings, candidates, results, manifest["smiles_sha256"])
    if not keep_work_dir:
        for number in range(len(chunks)):
            _chunk_path(work_dir, number).unlink()
        (work_dir / MANIFEST).unlink()
        for leftover in work_dir.glob(".chunk_*.tmp"):  # temporary files of a killed run
            leftover.unlink()
        try:
            work_dir.rmdir()
        except OSError:
            pass  # the directory holds files this generator did not write: leave them
    return f"{summary}, wall {time.perf_counter() - start:.0f} s"


def _write_h5(
    out: Path,
    settings: ManyMoleculeSettings,
    candidates: list[Candidate],
    results: list[MoleculeConformers],
    smiles_sha256: str,
) -> str:
    """Merge the labelled molecules into one ANI-1x-layout HDF5 file (atomically); return a summary."""
    by_formula: dict[str, list[MoleculeConformers]] = {}
    for result in results:
        if result.status == OK:
            formula = Atoms(numbers=result.numbers).get_chemical_formula(mode="hill")
            by_formula.setdefault(formula, []).append(result)
    if not by_formula:
        raise RuntimeError("no molecule could be labelled")
    first = by_formula[min(by_formula)][0]
    first_atoms = Atoms(numbers=first.numbers, positions=first.coordinates[0])
    fd_error = finite_difference_error(
        first_atoms, first.forces[0] * HARTREE_TO_EV, METHOD, all_components(len(first_atoms))
    )
    statuses = Counter(result.status for result in results)
    conformations = sum(len(result.energies) for result in results)
    provenance = {
        "generator": __name__,
        "settings": dataclasses.asdict(settings),
        "method": METHOD,
        "versions": package_versions(["tblite", "rdkit", "selfies", "ase", "numpy", "h5py"]),
        "command": command_line(),
        "seeds": (
            f"molecule list: SELFIES drawn from numpy default_rng({settings.seed}); molecule i: RDKit embedding "
            f"seed and rattles from numpy default_rng([{settings.seed}, i])"
        ),
        "molecules_sampled": len(candidates),
        "molecules_by_status": dict(sorted(statuses.items())),
        "conformations": conformations,
        "scf_failures": sum(result.scf_failures for result in results),
        "force_redraws": sum(result.force_redraws for result in results),
        "conformations_left_out": settings.molecules * settings.conformers_per_molecule - conformations,
        "smiles_sha256": smiles_sha256,
        "finite_difference_force_error_hartree_per_angstrom": fd_error / HARTREE_TO_EV,
    }
    compressed = {"compression": "gzip", "shuffle": True, "track_times": False}
    text = h5py.string_dtype()

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as h5:
            h5.attrs["description"] = (
                "Random C/H/N/O molecules (1-8 heavy atoms) in the ANI-1x release layout, GFN2-xTB labels: the keys "
                "named wb97x_dz.* hold GFN2-xTB (tblite) values, NOT wB97x/6-31G(d). 'smiles' gives each "
                "conformation's molecule."
            )
            h5.attrs["method"] = METHOD
            h5.attrs["units"] = "coordinates: Angstrom; energy: Hartree; forces: Hartree/Angstrom"
            h5.attrs["provenance"] = json.dumps(provenance, indent=1)
            table = h5.create_group("molecules")
            table.attrs["description"] = "every sampled molecule, in sampling order (index i used seed [seed, i])"
            table.create_dataset("smiles", data=[c.smiles for c in candidates], dtype=text, track_times=False)
            table.create_dataset("selfies", data=[c.selfies for c in candidates], dtype=text, track_times=False)
            table.create_dataset("status", data=[r.status for r in results], dtype=text, track_times=False)
            table.create_dataset("conformers", data=[len(r.energies) for r in results], track_times=False)
            for formula in sorted(by_formula):
                members = by_formula[formula]
                coordinates = np.concatenate([m.coordinates for m in members])
                energies = np.concatenate([m.energies for m in members])
                forces = np.concatenate([m.forces for m in members])
                check_finite(formula, coordinates, energies, forces)
                group = h5.create_group(formula)
                group.create_dataset("atomic_numbers", data=members[0].numbers, track_times=False)
                group.create_dataset("coordinates", data=coordinates, **compressed)
                energy = group.create_dataset("wb97x_dz.energy", data=energies, track_times=False)
                energy.attrs["method"] = METHOD
                energy.attrs["units"] = "Hartree"
                force = group.create_dataset("wb97x_dz.forces", data=forces, **compressed)
                force.attrs["method"] = METHOD
                force.attrs["units"] = "Hartree/Angstrom"
                smiles = [candidates[m.index].smiles for m in members for _ in range(len(m.energies))]
                group.create_dataset("smiles", data=smiles, dtype=text, track_times=False)

    atomic_write(out, write)
    return (
        f"wrote {out}: {conformations} conformations of {statuses[OK]} molecules in {len(by_formula)} formulas "
        f"({len(candidates) - statuses[OK]} molecules left out: {dict(statuses - Counter({OK: statuses[OK]}))}), "
        f"{provenance['scf_failures']} SCF failures skipped, {provenance['force_redraws']} rattles redrawn by the "
        f"force guard, "
        f"finite-difference force error (first conformation) {fd_error / HARTREE_TO_EV:.2e} Hartree/A"
    )
