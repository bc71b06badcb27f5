#!/usr/bin/env python
"""How far the cheap level of a trajectory is from the expensive level of its relabelled frames.

A DFT set written by scripts/generate_dft_data.py (sGDML layout: R, E, F and ``source_frames``, the
indices of its frames in the trajectory it was labelled from) holds the same geometries as those
frames of --src, which carries the cheap level's labels (e.g. GFN2-xTB). On the frames of --dft
this prints and writes (--json) the cheap level's errors against the expensive one: the mean
energy offset (kcal/mol; a constant a fine-tuned model must learn or be shifted by), the energy RMSE
and MAE after removing it, and the force RMSE and MAE per component (kcal/mol/Å) where --dft has
forces. It is the error of using the cheap level itself as the model: the row a fine-tuning
study's models must beat. Geometries are checked to agree to 1e-5 Å.

Example (the bundled ethanol sets):
  python scripts/compare_levels.py rmd17 --src data/rmd17_ethanol_gfn2xtb_500K.npz \
      --dft data/dft/ethanol_wb97x_631gs/test.npz --json results/finetune_dft/gfn2xtb_vs_wb97x.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from piwsl.data.formats import FORMATS, open_source
from piwsl.data.validation import DataFormatError
from piwsl.jsonfiles import write_json_atomic

#: Largest coordinate difference (Å) between a relabelled frame and its source frame.
POSITION_TOLERANCE = 1e-5


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=sorted(FORMATS), help="format of --src (as for prepare_data.py)")
    parser.add_argument("--src", type=Path, required=True, help="the trajectory the frames were labelled from")
    parser.add_argument("--dft", type=Path, required=True, help="a train.npz or test.npz of generate_dft_data.py")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    return parser


def compare(source_format: str, source_path: Path, dft_path: Path) -> dict:
    """The cheap level's errors against the expensive one on the frames of ``dft_path`` (kcal/mol, Å)."""
    if not dft_path.is_file():
        raise DataFormatError(f"{dft_path}: no such file")
    with np.load(dft_path) as dft:
        missing = [key for key in ("R", "E", "source_frames") if key not in dft]
        if missing:
            raise DataFormatError(f"{dft_path}: no {', '.join(missing)}; expected a set of generate_dft_data.py")
        positions, energies = dft["R"], dft["E"]
        forces = dft["F"] if "F" in dft else None
        frames = dft["source_frames"].astype(np.int64)
        theory = str(dft["theory"]) if "theory" in dft else "reference"
    source = open_source(source_format, source_path)
    count = source.count()
    if frames.size and (frames.min() < 0 or frames.max() >= count):
        raise DataFormatError(f"{dft_path}: source frame {int(frames.max())} is not in {source_path} ({count} frames)")
    wanted = np.zeros(count, dtype=bool)
    wanted[frames] = True
    cheap = dict(source.records(wanted))
    order = [cheap[int(frame)] for frame in frames]
    for index, (frame, structure) in enumerate(zip(frames, order, strict=True)):
        if np.abs(structure.positions - positions[index]).max() > POSITION_TOLERANCE:
            raise DataFormatError(f"{dft_path}: frame {index} is not frame {int(frame)} of {source_path}")
    difference = np.array([structure.energy for structure in order]) - energies
    offset = float(difference.mean())
    centred = difference - offset
    result = {
        "source": str(source_path),
        "reference": str(dft_path),
        "reference_theory": theory,
        "frames": int(frames.size),
        "energy_offset_kcal_mol": offset,
        "energy_rmse_kcal_mol": float(np.sqrt(np.mean(centred**2))),
        "energy_mae_kcal_mol": float(np.mean(np.abs(centred))),
    }
    if forces is not None:
        if any(structure.forces is None for structure in order):
            raise DataFormatError(f"{source_path}: has no forces to compare with {dft_path}'s")
        force_difference = np.stack([structure.forces for structure in order]) - forces
        result["forces_rmse_kcal_mol_A"] = float(np.sqrt(np.mean(force_difference**2)))
        result["forces_mae_kcal_mol_A"] = float(np.mean(np.abs(force_difference)))
    return result


def table(result: dict) -> str:
    rows = [
        ("frames", f"{result['frames']}"),
        ("mean energy offset (cheap − reference), kcal/mol", f"{result['energy_offset_kcal_mol']:.2f}"),
        ("energy RMSE / MAE after the offset, kcal/mol", f"{result['energy_rmse_kcal_mol']:.3f} / "
                                                          f"{result['energy_mae_kcal_mol']:.3f}"),
    ]  # fmt: skip
    if "forces_rmse_kcal_mol_A" in result:
        rows.append(("force RMSE / MAE per component, kcal/mol/Å",
                     f"{result['forces_rmse_kcal_mol_A']:.3f} / {result['forces_mae_kcal_mol_A']:.3f}"))  # fmt: skip
    head = f"| {Path(result['source']).name} vs {result['reference_theory']} ({result['reference']}) | |"
    return "\n".join([head, "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        result = compare(args.format, args.src, args.dft)
    except DataFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json is not None:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
