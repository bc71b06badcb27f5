"""High-level reference labels with PySCF: DFT energies of training frames, energies and forces of test frames.

Fine-tuning on expensive labels (ωB97X/6-31G*, the ANI-1x level, or PBE/def2-SVP, the rMD17 level)
needs energies of a few training geometries and energies and forces of held-out test geometries,
taken from an existing trajectory. ``label_frames`` computes them one frame at a time and appends
each result to a progress file (JSON lines) as soon as it is known, so a killed run loses at most
the frames being computed and resumes where it stopped. ``write_sets`` then writes two sGDML npz
files (``z``, ``R`` Å, ``E`` kcal/mol, and ``F`` kcal/mol/Å for the test set) that
``scripts/prepare_data.py sgdml`` reads, and a ``provenance.json`` (PySCF version, functional,
basis, source file and checksum, source frame indices, command).

PySCF is imported only when a label is computed (``pip install piwsl[datagen]``).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from piwsl.data.units import HARTREE_TO_KCAL_PER_MOL
from piwsl.datagen.common import atomic_write
from piwsl.datagen.sgdml import write_sgdml

#: Å per Bohr (CODATA 2018, as PySCF's ``lib.param.BOHR``).
BOHR_TO_ANGSTROM = 0.529177210903
#: Names of the files a labelling run writes into its output directory.
PROGRESS_FILE = "progress.jsonl"
TRAIN_FILE = "train.npz"
TEST_FILE = "test.npz"
PROVENANCE_FILE = "provenance.json"


class DftError(ValueError):
    """A labelling run that cannot proceed; the message names the file, frame or setting."""


@dataclass(frozen=True)
class DftLevel:
    """A level of theory: Kohn-Sham DFT with ``functional`` (a libxc name) in ``basis``.

    Attributes:
        functional, basis: e.g. ``wb97x`` / ``6-31g*`` (ANI-1x) or ``pbe`` / ``def2-svp`` (rMD17).
        charge: total charge (e); spin: number of unpaired electrons (2S); open shells use UKS.
        density_fit: density fitting of the Coulomb/exchange integrals (about 2x faster, ~0.1 kcal/mol).
        grid_level: PySCF's integration grid level (0-9; 3 is its default).
        conv_tol: SCF energy convergence threshold, Hartree.
    """

    functional: str = "wb97x"
    basis: str = "6-31g*"
    charge: int = 0
    spin: int = 0
    density_fit: bool = False
    grid_level: int = 3
    conv_tol: float = 1e-9

    def theory(self) -> str:
        """A short label such as ``wb97x/6-31g*`` (``+DF`` with density fitting)."""
        return f"{self.functional}/{self.basis}" + ("+DF" if self.density_fit else "")


@dataclass(frozen=True)
class Label:
    """One frame's labels: energy (kcal/mol), forces (kcal/mol/Å) or ``None``, and the wall time (s)."""

    energy: float
    forces: np.ndarray | None
    seconds: float


def check_level(level: DftLevel, elements: Sequence[int]) -> None:
    """Raise ``DftError`` for a functional or basis PySCF does not know (for these ``elements``)."""
    from pyscf import gto
    from pyscf.dft import libxc

    try:
        libxc.parse_xc(level.functional)
    except (KeyError, ValueError) as error:
        raise DftError(f"functional '{level.functional}' is unknown to PySCF/libxc ({error})") from error
    for number in sorted(set(int(z) for z in elements)):
        symbol = chemical_symbols[number]
        try:
            with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange for unknown names
                warnings.simplefilter("ignore")
                shells = gto.basis.load(level.basis, symbol)
        except (KeyError, ValueError, RuntimeError, OSError) as error:  # BasisNotFoundError is a RuntimeError
            raise DftError(f"basis '{level.basis}' is unknown to PySCF for element {symbol} ({error})") from error
        if not shells:
            raise DftError(f"basis '{level.basis}' has no functions for element {symbol}")


def compute_label(numbers: np.ndarray, positions: np.ndarray, level: DftLevel, with_forces: bool) -> Label:
    """Kohn-Sham energy (kcal/mol) and, if ``with_forces``, forces (kcal/mol/Å) of one geometry (Å).

    A fresh SCF from PySCF's default guess: the label does not depend on the order frames are computed in.
    An SCF that does not converge is retried with second-order (Newton) iterations, then reported.
    """
    from pyscf import dft, gto, lib

    lib.num_threads(1)
    start = time.perf_counter()
    atom = [(int(z), tuple(float(x) for x in position)) for z, position in zip(numbers, positions, strict=True)]
    mol = gto.M(atom=atom, basis=level.basis, unit="Angstrom", charge=level.charge, spin=level.spin, verbose=0)
    scf = dft.RKS(mol) if level.spin == 0 else dft.UKS(mol)
    scf.xc = level.functional
    scf.grids.level = level.grid_level
    scf.conv_tol = level.conv_tol
    if level.density_fit:
        scf = scf.density_fit()
    energy = scf.kernel()
    if not scf.converged:
        scf = scf.newton()
        energy = scf.kernel(scf.make_rdm1())
        if not scf.converged:
            raise DftError(f"the {level.theory()} SCF did not converge (also not with Newton iterations)")
    forces = None
    if with_forces:
        gradient = scf.nuc_grad_method().kernel()  # Ha/Bohr
        forces = -np.asarray(gradient, dtype=np.float64) * HARTREE_TO_KCAL_PER_MOL / BOHR_TO_ANGSTROM
    return Label(float(energy) * HARTREE_TO_KCAL_PER_MOL, forces, time.perf_counter() - start)


@dataclass(frozen=True)
class FramePlan:
    """Source frame indices to label: ``test`` (energies and forces) drawn first, then ``train`` (energies).

    Both come from one seeded permutation of the source frames, so they are disjoint, the test
    frames do not depend on the number of training frames, and a smaller training set is a prefix
    of a larger one (its labels are reused on resume).
    """

    train: np.ndarray
    test: np.ndarray

    def tasks(self) -> list[tuple[int, bool]]:
        """``(source index, with forces)`` of every frame, test frames first."""
        return [(int(i), True) for i in self.test] + [(int(i), False) for i in self.train]


def plan_frames(num_frames: int, train: int, test: int, seed: int) -> FramePlan:
    """Choose ``test`` then ``train`` distinct frames of ``num_frames`` with a permutation seeded by ``seed``."""
    if train < 0 or test < 0:
        raise DftError(f"frame counts must be >= 0, got train {train} and test {test}")
    if train + test > num_frames:
        raise DftError(f"{train} training + {test} test frames requested, the source has only {num_frames}")
    order = np.random.default_rng(seed).permutation(num_frames)
    return FramePlan(train=order[test : test + train], test=order[:test])


def read_progress(path: Path) -> tuple[dict[str, Any] | None, dict[tuple[int, bool], Label]]:
    """The header and finished labels of a progress file; a torn last line (a killed write) is dropped."""
    if not path.exists():
        return None, {}
    lines = path.read_text().split("\n")
    header: dict[str, Any] | None = None
    labels: dict[tuple[int, bool], Label] = {}
    complete = lines[:-1]  # every finished record ends with a newline
    for number, line in enumerate(complete, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DftError(f"{path}:{number}: not a JSON record ({error}); remove the file to start over") from error
        if number == 1:
            header = record
            continue
        forces = None if record["forces"] is None else np.asarray(record["forces"], dtype=np.float64)
        labels[(int(record["index"]), forces is not None)] = Label(record["energy"], forces, record["seconds"])
    if lines[-1]:
        with open(path, "r+") as handle:  # cut the torn record so that appends start on a fresh line
            handle.truncate(len("\n".join(complete)) + (1 if complete else 0))
    return header, labels


def check_header(path: Path, header: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise when a progress file was written for another level of theory or another source file."""
    for key, value in expected.items():
        if header.get(key) != value:
            raise DftError(
                f"{path}: made with {key} = {header.get(key)!r}, this run has {value!r}; "
                "use another --out or remove the progress file"
            )


def label_frames(
    numbers: np.ndarray,
    positions: dict[int, np.ndarray],
    plan: FramePlan,
    level: DftLevel,
    progress: Path,
    header: dict[str, Any],
    workers: int = 1,
    compute: Callable[[np.ndarray, np.ndarray, DftLevel, bool], Label] = compute_label,
    show_progress: bool | None = None,
    known: dict[tuple[int, bool], Label] | None = None,
) -> dict[tuple[int, bool], Label]:
    """Label every frame of ``plan``, skipping those already in ``progress`` or ``known``; return all labels.

    ``positions`` maps source indices to coordinates (Å). Each finished label is appended to
    ``progress`` (flushed and synced) before the next is started, after a first line ``header``
    that a resumed run must match. ``workers`` > 1 labels frames in that many processes.
    ``known`` holds labels of a finished set being extended (not written to ``progress``).
    """
    from tqdm import tqdm

    found, labels = read_progress(progress)
    if found is None:
        progress.parent.mkdir(parents=True, exist_ok=True)
        with open(progress, "w") as handle:
            handle.write(json.dumps(header) + "\n")
    else:
        check_header(progress, found, header)
    labels = (known or {}) | labels
    todo = [task for task in plan.tasks() if task not in labels]
    with (
        open(progress, "a") as handle,
        tqdm(
            total=len(plan.tasks()),
            initial=len(plan.tasks()) - len(todo),
            desc="DFT labels",
            unit="frame",
            disable=None if show_progress is None else not show_progress,
        ) as bar,
    ):
        for (index, with_forces), label in _labelled(numbers, positions, todo, level, workers, compute):
            handle.write(json.dumps(_record(index, label)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            labels[(index, with_forces)] = label
            bar.update(1)
    return labels


def _record(index: int, label: Label) -> dict[str, Any]:
    forces = None if label.forces is None else label.forces.tolist()
    return {"index": index, "energy": label.energy, "forces": forces, "seconds": round(label.seconds, 3)}


def _labelled(
    numbers: np.ndarray,
    positions: dict[int, np.ndarray],
    todo: list[tuple[int, bool]],
    level: DftLevel,
    workers: int,
    compute: Callable[[np.ndarray, np.ndarray, DftLevel, bool], Label],
) -> Iterator[tuple[tuple[int, bool], Label]]:
    """Yield each task with its label, in order with one worker, as finished with several."""
    if workers <= 1:
        for task in todo:
            yield task, _label_frame(compute, numbers, positions[task[0]], level, task)
        return
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(_label_frame, compute, numbers, positions[task[0]], level, task): task for task in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()


def _label_frame(
    compute: Callable[[np.ndarray, np.ndarray, DftLevel, bool], Label],
    numbers: np.ndarray,
    positions: np.ndarray,
    level: DftLevel,
    task: tuple[int, bool],
) -> Label:
    """``compute`` for one frame; a ``DftError`` names the source frame."""
    try:
        return compute(numbers, positions, level, task[1])
    except DftError as error:
        raise DftError(f"source frame {task[0]}: {error}") from error


def finished_labels(
    out_dir: Path, plan: FramePlan, positions: dict[int, np.ndarray], expected: dict[str, Any]
) -> tuple[dict[tuple[int, bool], Label], dict[str, Any]]:
    """Labels and provenance of the finished set in ``out_dir``, checked to be a part of ``plan``.

    Extending a set (``generate_dft_data.py --extend``) keeps its test frames and labels and adds
    training frames: ``plan``'s test frames must be the stored ones in the same order, its training
    frames must start with the stored ones, the stored coordinates must be ``positions``' and
    ``expected`` (level, source checksum, format, seed) must match the provenance. The labels carry
    NaN seconds: their timings are in the provenance's ``history``.
    """
    files = [out_dir / name for name in (TRAIN_FILE, TEST_FILE, PROVENANCE_FILE)]
    missing = [path for path in files if not path.exists()]
    if missing:
        raise DftError(f"{missing[0]} is missing: --extend needs a finished set (train.npz, test.npz, provenance.json)")
    provenance = json.loads(files[2].read_text())
    for key, value in expected.items():
        if provenance.get(key) != value:
            raise DftError(
                f"{files[2]}: made with {key} = {provenance.get(key)!r}, this run has {value!r}; "
                "--extend must keep the source, level of theory and seed"
            )
    labels: dict[tuple[int, bool], Label] = {}
    for path, wanted, with_forces in ((files[1], plan.test, True), (files[0], plan.train, False)):
        with np.load(path) as archive:
            frames = archive["source_frames"].astype(np.int64)
            energies, coords = archive["E"], archive["R"]
            forces = archive["F"] if with_forces else None
        if with_forces and not np.array_equal(frames, wanted):
            raise DftError(
                f"{path}: has {len(frames)} test frames, this run plans {len(wanted)} or others; "
                f"--extend keeps the test set: pass --test-frames {len(frames)}"
            )
        if not np.array_equal(frames, wanted[: len(frames)]) or len(frames) > len(wanted):
            raise DftError(
                f"{path}: its {len(frames)} training frames are not the first of this run's {len(wanted)}; "
                f"--extend only adds frames: pass --train-frames >= {len(frames)} and the same --seed"
            )
        for row, index in enumerate(frames.tolist()):
            if not np.allclose(coords[row], positions[index], rtol=0.0, atol=1e-9):
                raise DftError(f"{path}: frame {row} (source frame {index}) has other coordinates than the source")
            frame_forces = None if forces is None else np.asarray(forces[row], dtype=np.float64)
            labels[(index, with_forces)] = Label(float(energies[row]), frame_forces, float("nan"))
    return labels, provenance


def write_sets(
    out_dir: Path,
    numbers: np.ndarray,
    positions: dict[int, np.ndarray],
    plan: FramePlan,
    labels: dict[tuple[int, bool], Label],
    name: str,
    level: DftLevel,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Write ``train.npz`` (energies), ``test.npz`` (energies, forces) and ``provenance.json``; return the latter.

    Frames are stored in plan order (the seeded permutation); ``source_frames`` in each npz gives
    their indices in the source file. ``label_seconds`` counts the labels computed by this run
    (those taken over from an extended set carry NaN seconds and are left out).
    """
    theory = level.theory()
    sets = {TRAIN_FILE: (plan.train, False), TEST_FILE: (plan.test, True)}
    for file_name, (indices, with_forces) in sets.items():
        frames = [int(i) for i in indices]
        coords = np.array([positions[i] for i in frames]).reshape(len(frames), len(numbers), 3)
        energies = [labels[(i, with_forces)].energy for i in frames]
        forces = np.array([labels[(i, True)].forces for i in frames]).reshape(coords.shape) if with_forces else None
        source_frames = np.asarray(frames, dtype=np.int64)
        write_sgdml(out_dir / file_name, numbers, coords, energies, forces, name, theory, source_frames=source_frames)
    seconds = [label.seconds for label in labels.values() if not np.isnan(label.seconds)]
    record = provenance | {
        "theory": theory,
        "level": asdict(level),
        "frames": {"train": len(plan.train), "test": len(plan.test)},
        "files": {TRAIN_FILE: "z, R (Angstrom), E (kcal/mol)", TEST_FILE: "z, R, E, F (kcal/mol/Angstrom)"},
        "source_frames": {"train": plan.train.tolist(), "test": plan.test.tolist()},
        "label_seconds": {
            "frames": len(seconds),
            "total": round(sum(seconds), 1),
            "mean": round(float(np.mean(seconds)), 2) if seconds else 0,
        },
    }
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(out_dir / PROVENANCE_FILE, lambda temporary: temporary.write_text(text))
    return record
