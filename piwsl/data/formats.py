"""Readers of the reference-data formats; each yields ``Structure`` records in kcal/mol and Å.

Formats (``FORMATS``): ``ani1x`` (HDF5, see ``piwsl.data.ani1x``), ``rmd17`` (npz), ``sgdml``
(the MD17/MD22 npz of sGDML, also named ``md17`` and ``md22``), ``tio2``
(a directory of aenet XSF files), and ``lmnto``/``ase`` (anything ASE reads: extxyz, traj, db;
XSF files among them are read as aenet XSF).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers as SYMBOL_TO_NUMBER
from ase.io import iread

from piwsl.data.ani1x import Ani1xSource
from piwsl.data.source import RecordSource
from piwsl.data.structures import Structure, molecule
from piwsl.data.units import EV_TO_KCAL_PER_MOL
from piwsl.data.validation import DataFormatError, check_finite, check_structure

#: Keys of an rMD17 npz.
RMD17_NUMBERS_KEY = "nuclear_charges"
RMD17_COORDS_KEY = "coords"
RMD17_ENERGY_KEY = "energies"
RMD17_FORCE_KEY = "forces"
#: Keys of an sGDML npz (MD17, MD22): atomic numbers, positions, energies (frames,) or (frames, 1), forces.
SGDML_NUMBERS_KEY = "z"
SGDML_COORDS_KEY = "R"
SGDML_ENERGY_KEY = "E"
SGDML_FORCE_KEY = "F"

#: The aenet energy comment, e.g. ``# total energy = -19960.785107 eV``.
XSF_ENERGY = re.compile(r"#\s*total\s+energy\s*=\s*(\S+)\s*(\S*)", re.IGNORECASE)
#: XSF keywords that set the periodicity, and the periodic directions they mean.
XSF_DIMENSIONS = {
    "MOLECULE": (False, False, False),
    "POLYMER": (True, False, False),
    "SLAB": (True, True, False),
    "CRYSTAL": (True, True, True),
}
XSF_KEYWORDS = {*XSF_DIMENSIONS, "PRIMVEC", "CONVVEC", "PRIMCOORD", "CONVCOORD", "ATOMS", "ANIMSTEPS"}
#: Files an ``ase``/``lmnto`` source directory is searched for (a single file may be in any ASE format).
ASE_SUFFIXES = (".extxyz", ".xyz", ".traj", ".db", ".xsf")


class Rmd17Source(RecordSource):
    """An rMD17 npz: ``nuclear_charges``, ``coords`` (Å), ``energies`` (kcal/mol), ``forces`` (kcal/mol/Å).

    One molecule per file (at most ~100 MB): ``count()`` loads and checks the arrays whole.
    """

    data_format = "rmd17"
    energy_unit = "kcal/mol"
    numbers_key = RMD17_NUMBERS_KEY
    coords_key = RMD17_COORDS_KEY

    def __init__(self, path: Path, energy_key: str = RMD17_ENERGY_KEY, force_key: str | None = RMD17_FORCE_KEY) -> None:
        self.path = Path(path)
        self.energy_key = energy_key
        self.force_key = force_key
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None

    def count(self) -> int:
        path = self.path
        try:
            archive = np.load(path)
        except (OSError, ValueError) as error:
            raise DataFormatError(f"{path}: not a readable npz file ({error})") from error
        with archive:
            wanted = [self.numbers_key, self.coords_key, self.energy_key] + ([self.force_key] if self.force_key else [])
            missing = [key for key in wanted if key not in archive.files]
            if missing:
                raise DataFormatError(
                    f"{path}: missing key(s) {missing}; the file has {sorted(archive.files)}"
                    + _npz_layout_hint(archive.files, self.data_format)
                )
            numbers = np.asarray(archive[self.numbers_key]).astype(np.int64)
            coords = np.asarray(archive[self.coords_key], dtype=np.float64)
            energies = np.asarray(archive[self.energy_key], dtype=np.float64)
            forces = np.asarray(archive[self.force_key], dtype=np.float64) if self.force_key else None
        if numbers.ndim != 1:
            raise DataFormatError(f"{path}: {self.numbers_key} has shape {numbers.shape}, expected (N,)")
        num_atoms = numbers.shape[0]
        if coords.ndim != 3 or coords.shape[1:] != (num_atoms, 3):
            raise DataFormatError(
                f"{path}: {self.coords_key} has shape {coords.shape}, expected (M, {num_atoms}, 3) "
                f"with {num_atoms} atoms as in {self.numbers_key}"
            )
        if forces is not None and forces.shape != coords.shape:
            raise DataFormatError(f"{path}: {self.force_key} has shape {forces.shape}, expected {coords.shape}")
        if energies.shape not in ((coords.shape[0],), (coords.shape[0], 1)):
            raise DataFormatError(
                f"{path}: {self.energy_key} has shape {energies.shape}, expected ({coords.shape[0]},) or "
                f"({coords.shape[0]}, 1) like {self.coords_key}"
            )
        for what, values in (("positions", coords), ("energy", energies), ("forces", forces)):
            if values is not None:  # every frame, also those no split takes
                bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
                if bad.any():
                    index = int(np.flatnonzero(bad)[0])
                    check_finite(values[index], what, f"{path}[{index}]")
        self._arrays = (numbers, coords, energies.reshape(-1), forces)
        return coords.shape[0]

    def records(self, selected: np.ndarray | None = None) -> Iterator[tuple[int, Structure]]:
        if self._arrays is None:
            raise RuntimeError("count() must be called before records()")
        numbers, coords, energies, forces = self._arrays
        indices = range(coords.shape[0]) if selected is None else np.flatnonzero(selected)
        for index in indices:
            record_forces = None if forces is None else forces[index]
            yield (
                int(index),
                molecule(numbers, coords[index], float(energies[index]), record_forces, f"{self.path}[{index}]"),
            )

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"energy_key": self.energy_key, "force_key": self.force_key}


class SgdmlSource(Rmd17Source):
    """An sGDML npz (MD17, MD22): ``z`` (N,), ``R`` (M, N, 3) Å, ``E`` (M,) or (M, 1) kcal/mol, ``F`` kcal/mol/Å.

    sGDML files carry more keys (``name``, ``theory``, ``md5``, ...); they are not read.
    """

    data_format = "sgdml"
    numbers_key = SGDML_NUMBERS_KEY
    coords_key = SGDML_COORDS_KEY

    def __init__(self, path: Path, energy_key: str = SGDML_ENERGY_KEY, force_key: str | None = SGDML_FORCE_KEY) -> None:
        super().__init__(path, energy_key, force_key)


#: Atomic-number and position keys that identify each npz layout, for hints in errors.
NPZ_LAYOUTS = {"rmd17": (RMD17_NUMBERS_KEY, RMD17_COORDS_KEY), "sgdml": (SGDML_NUMBERS_KEY, SGDML_COORDS_KEY)}


def _npz_layout_hint(keys: list[str], data_format: str) -> str:
    """``"; it looks like an X npz: use format X"`` when ``keys`` match another npz layout, else ``""``."""
    for name, layout_keys in NPZ_LAYOUTS.items():
        if name != data_format and all(key in keys for key in layout_keys):
            return f"; it looks like an {name} npz: use format {name}"
    return ""


def read_rmd17(path: Path) -> list[Structure]:
    """Read and check an rMD17 npz (``nuclear_charges``, ``coords`` Å, ``energies`` kcal/mol, ``forces`` kcal/mol/Å)."""
    source = Rmd17Source(path)
    source.count()
    structures = [structure for _, structure in source.records()]
    for structure in structures:
        check_structure(structure)
    return structures


def read_xsf(path: Path) -> Structure:
    """Read one aenet XSF file: ``# total energy = E eV``, positions Å, forces eV/Å (converted to kcal/mol).

    ASE's XSF reader takes the force columns for Ha/Å (the XSF specification); aenet writes eV/Å,
    so the file is parsed here. Supports CRYSTAL/SLAB/POLYMER/MOLECULE with PRIMVEC and PRIMCOORD,
    and non-periodic ATOMS blocks; species as symbols or atomic numbers.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path}: cannot read the file ({error})") from error
    energy = None
    lines: list[tuple[int, list[str]]] = []
    for line_number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            match = XSF_ENERGY.match(stripped)
            if match:
                energy = _xsf_energy(match, path, line_number)
        elif stripped:
            lines.append((line_number, stripped.split()))
    if energy is None:
        raise DataFormatError(f"{path}: no '# total energy = ... eV' line")
    pbc, cell, rows = _xsf_blocks(lines, path)
    widths = {len(tokens) for _, tokens in rows}
    if not widths <= {4, 7} or len(widths) != 1:
        raise DataFormatError(f"{path}: atom lines have {sorted(widths)} columns, expected all 4 or all 7")
    numbers = np.array([_xsf_species(tokens[0], path, line_number) for line_number, tokens in rows], dtype=np.int64)
    values = np.array([[_xsf_float(token, path, n) for token in tokens[1:]] for n, tokens in rows], dtype=np.float64)
    forces = values[:, 3:6] * EV_TO_KCAL_PER_MOL if widths == {7} else None
    return Structure(
        numbers=numbers,
        positions=values[:, :3],
        energy=energy * EV_TO_KCAL_PER_MOL,
        forces=forces,
        cell=cell,
        pbc=np.array(pbc, dtype=bool),
        source=str(path),
    )


def _xsf_energy(match: re.Match, path: Path, line_number: int) -> float:
    if match.group(2).lower() != "ev":
        raise DataFormatError(f"{path}:{line_number}: total energy unit '{match.group(2)}', expected eV")
    return _xsf_float(match.group(1), path, line_number)


def _xsf_float(token: str, path: Path, line_number: int) -> float:
    try:
        return float(token)
    except ValueError as error:
        raise DataFormatError(f"{path}:{line_number}: '{token}' is not a number") from error


def _xsf_species(token: str, path: Path, line_number: int) -> int:
    if token.isdigit():
        return int(token)
    if token not in SYMBOL_TO_NUMBER:
        raise DataFormatError(f"{path}:{line_number}: unknown element '{token}'")
    return SYMBOL_TO_NUMBER[token]


def _xsf_blocks(
    lines: list[tuple[int, list[str]]], path: Path
) -> tuple[tuple[bool, bool, bool], np.ndarray, list[tuple[int, list[str]]]]:
    """Periodicity, cell (zeros when absent) and atom lines of an XSF file's keyword blocks."""
    pbc = (False, False, False)
    cell = np.zeros((3, 3))
    rows: list[tuple[int, list[str]]] | None = None
    position = 0
    while position < len(lines):
        line_number, tokens = lines[position]
        keyword = tokens[0].upper()
        if keyword in XSF_DIMENSIONS:
            pbc = XSF_DIMENSIONS[keyword]
            position += 1
        elif keyword in ("PRIMVEC", "CONVVEC"):
            vectors = lines[position + 1 : position + 4]
            if len(vectors) != 3 or any(len(vector) != 3 for _, vector in vectors):
                raise DataFormatError(f"{path}:{line_number}: {keyword} needs three lines of three numbers")
            if keyword == "PRIMVEC":
                cell = np.array([[_xsf_float(t, path, n) for t in vector] for n, vector in vectors])
            position += 4
        elif keyword in ("PRIMCOORD", "CONVCOORD"):
            if position + 1 >= len(lines) or not lines[position + 1][1][0].isdigit():
                raise DataFormatError(f"{path}:{line_number}: {keyword} must be followed by the number of atoms")
            count = int(lines[position + 1][1][0])
            block = lines[position + 2 : position + 2 + count]
            if len(block) != count:
                raise DataFormatError(f"{path}:{line_number}: {keyword} announces {count} atoms, found {len(block)}")
            if keyword == "PRIMCOORD":
                rows = block
            position += 2 + count
        elif keyword == "ATOMS":
            end = position + 1
            while end < len(lines) and lines[end][1][0].upper() not in XSF_KEYWORDS:
                end += 1
            rows = lines[position + 1 : end]
            position = end
        else:
            raise DataFormatError(f"{path}:{line_number}: unexpected '{' '.join(tokens)}' (multi-step XSF unsupported)")
    if not rows:
        raise DataFormatError(f"{path}: no atoms (neither a PRIMCOORD nor an ATOMS block)")
    if any(pbc) and not cell.any():
        raise DataFormatError(f"{path}: periodic but without PRIMVEC")
    return pbc, cell, rows


class XsfDirectorySource(RecordSource):
    """A directory of aenet XSF files (e.g. the TiO2 set of Artrith & Urban 2016), in sorted path order."""

    data_format = "tio2"
    energy_unit = "eV"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._files: list[Path] = []

    def count(self) -> int:
        if not self.path.is_dir():
            raise DataFormatError(f"{self.path}: expected a directory of .xsf files")
        self._files = sorted(self.path.rglob("*.xsf"))
        if not self._files:
            raise DataFormatError(f"{self.path}: no .xsf files in this directory")
        return len(self._files)

    def records(self, selected: np.ndarray | None = None) -> Iterator[tuple[int, Structure]]:
        indices = range(len(self._files)) if selected is None else np.flatnonzero(selected)
        for index in indices:
            yield int(index), read_xsf(self._files[index])

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"files": len(self._files)}


class AseSource(RecordSource):
    """Anything ASE reads with energies (eV) and forces (eV/Å): a file, or a directory of such files.

    Labels are looked up under ``energy_key``/``force_key`` in the calculator results, then in
    ``atoms.info``/``atoms.arrays`` (extxyz files with e.g. ``REF_energy``). ``.xsf`` files are
    read as aenet XSF (:func:`read_xsf`). Periodic or not, as the file says.
    """

    energy_unit = "eV"

    def __init__(
        self, path: Path, data_format: str = "ase", energy_key: str = "energy", force_key: str | None = "forces"
    ) -> None:
        self.path = Path(path)
        self.data_format = data_format
        self.energy_key = energy_key
        self.force_key = force_key
        self._files: list[Path] = []

    def count(self) -> int:
        if self.path.is_dir():
            self._files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in ASE_SUFFIXES)
            if not self._files:
                raise DataFormatError(f"{self.path}: no files ending in {', '.join(ASE_SUFFIXES)} in this directory")
        else:
            self._files = [self.path]
        return sum(1 for _ in self._structures())

    def records(self, selected: np.ndarray | None = None) -> Iterator[tuple[int, Structure]]:
        for index, structure in enumerate(self._structures()):
            if selected is None or (index < len(selected) and selected[index]):
                yield index, structure

    def settings(self) -> dict[str, Any]:
        return super().settings() | {
            "energy_key": self.energy_key,
            "force_key": self.force_key,
            "files": len(self._files),
        }

    def _structures(self) -> Iterator[Structure]:
        for file in self._files:
            if file.suffix.lower() == ".xsf":
                yield read_xsf(file)
                continue
            for index, atoms in _ase_frames(file):
                yield self._convert(atoms, f"{file}[{index}]")

    def _convert(self, atoms: Atoms, source: str) -> Structure:
        results = atoms.calc.results if atoms.calc is not None else {}
        energy = results.get(self.energy_key, atoms.info.get(self.energy_key))
        if energy is None or np.size(energy) != 1:
            raise DataFormatError(f"{source}: no scalar energy '{self.energy_key}' in the calculator results or info")
        forces = None
        if self.force_key is not None:
            forces = results.get(self.force_key, atoms.arrays.get(self.force_key))
            if forces is None:
                raise DataFormatError(
                    f"{source}: no forces '{self.force_key}' in the calculator results or arrays "
                    "(use --force-key none for energy-only data)"
                )
            forces = np.asarray(forces, dtype=np.float64) * EV_TO_KCAL_PER_MOL
        return Structure(
            numbers=atoms.numbers.astype(np.int64),
            positions=atoms.positions.astype(np.float64),
            energy=float(np.asarray(energy, dtype=np.float64).reshape(-1)[0]) * EV_TO_KCAL_PER_MOL,
            forces=forces,
            cell=atoms.cell.array.astype(np.float64),
            pbc=atoms.pbc.astype(bool),
            source=source,
        )


def _ase_frames(file: Path) -> Iterator[tuple[int, Atoms]]:
    """The frames of ``file`` as ASE reads them; read errors name the file and frame."""
    frames = iread(str(file), index=":")
    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as error:  # ASE raises many types for a malformed file
            raise DataFormatError(
                f"{file}[{index}]: ASE cannot read this frame ({type(error).__name__}: {error})"
            ) from error
        yield index, atoms
        index += 1


@dataclass(frozen=True)
class FormatSpec:
    """A format the CLI offers: how to open it and the paper's defaults for it."""

    open: Callable[..., RecordSource]
    description: str
    default_test_size: int
    default_self_energies: str
    takes_label_keys: bool


FORMATS = {
    "ani1x": FormatSpec(
        Ani1xSource,
        "ANI-1x release HDF5 (groups per formula; Ha, Ha/Angstrom), streamed",
        10_000,
        "fit",
        True,
    ),
    "rmd17": FormatSpec(Rmd17Source, "rMD17 npz (kcal/mol, kcal/mol/Angstrom)", 10_000, "none", True),
    **{
        name: FormatSpec(
            SgdmlSource,
            "sGDML npz of MD17/MD22 (keys z, R, E, F; kcal/mol, kcal/mol/Angstrom)"
            + ("" if name == "sgdml" else "; same as sgdml"),
            10_000,
            "none",
            True,
        )
        for name in ("sgdml", "md17", "md22")
    },
    "tio2": FormatSpec(
        XsfDirectorySource, "directory of aenet XSF files (eV, eV/Angstrom), periodic", 1_000, "fit", False
    ),
    "lmnto": FormatSpec(
        lambda path, **keys: AseSource(path, "lmnto", **keys),
        "LMNTO: any ASE-readable file or directory (eV, eV/Angstrom)",
        1_000,
        "fit",
        True,
    ),
    "ase": FormatSpec(
        AseSource,
        "any ASE-readable file or directory with energies and forces (extxyz, traj, db, xsf; eV)",
        1_000,
        "fit",
        True,
    ),
}


def open_source(data_format: str, path: Path, **label_keys: str | None) -> RecordSource:
    """The reader of ``data_format`` for ``path``; ``label_keys`` are ``energy_key``/``force_key`` overrides."""
    if data_format not in FORMATS:
        raise ValueError(f"unknown format '{data_format}'; known: {sorted(FORMATS)}")
    spec = FORMATS[data_format]
    if label_keys and not spec.takes_label_keys:
        raise ValueError(f"{data_format} files have fixed label keys; {sorted(label_keys)} cannot be set")
    if not Path(path).exists():
        raise DataFormatError(f"{path}: not found")
    return spec.open(Path(path), **label_keys)
