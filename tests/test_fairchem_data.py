"""PIWSLTrainer on fairchem's own data pipeline: ``ase_db``, ``ase_read`` and AtomsToGraphs LMDBs.

fairchem's ``AtomsToGraphs`` stores ``pbc`` per structure with shape (3,) (a batch holds (3B,)) and
gives molecules a 1 Å placeholder cell; a displaced copy that lost ``pbc`` would be a 1 Å periodic
box. The forward of an undisplaced copy (stacked or alone) must equal fairchem's own forward.
"""

from __future__ import annotations

import copy
import pickle

import ase.db
import ase.io
import lmdb
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from fairchem.core.preprocessing import AtomsToGraphs
from fairchem.core.trainers import OCPTrainer
from trainer_helpers import ETHANOL, ROOT, make_trainer, tiny_config

from piwsl.batching import select_structures, stack_geometries

TIO2 = ROOT / "tests/data/tio2_gfn1xtb.extxyz"


def ethanol_frames(start: int, count: int = 8) -> list[Atoms]:
    data = np.load(ETHANOL)
    frames = []
    for k in range(start, start + count):
        atoms = Atoms(numbers=data["nuclear_charges"], positions=data["coords"][k])
        atoms.calc = SinglePointCalculator(atoms, energy=float(data["energies"][k]), forces=data["forces"][k])
        frames.append(atoms)
    return frames


def tio2_frames(start: int, count: int = 4) -> list[Atoms]:
    """Four of the six frames for training (``start`` 0), the other two for validation."""
    return list(ase.io.read(TIO2, index=f"{min(start, 4)}:{min(start, 4) + count}"))


def write_ase_db(frames: list[Atoms], path) -> dict:
    with ase.db.connect(str(path)) as database:
        for atoms in frames:
            database.write(atoms)
    return {"format": "ase_db", "src": str(path)}


def write_ase_read(frames: list[Atoms], directory) -> dict:
    directory.mkdir()
    for k, atoms in enumerate(frames):
        ase.io.write(directory / f"{k:03d}.extxyz", atoms)
    return {"format": "ase_read", "src": str(directory), "pattern": "*.extxyz"}


def write_a2g_lmdb(frames: list[Atoms], directory) -> dict:
    """An LMDB of ``AtomsToGraphs`` records, as fairchem's preprocessing tutorials write them."""
    directory.mkdir()
    converter = AtomsToGraphs(r_energy=True, r_forces=True, r_pbc=True, r_edges=False, r_fixed=True)
    env = lmdb.open(str(directory / "data.lmdb"), subdir=False, map_size=1 << 30, meminit=False, map_async=True)
    with env.begin(write=True) as transaction:
        for k, atoms in enumerate(frames):
            record = converter.convert(atoms)
            record.sid, record.fid = k, k
            transaction.put(f"{k}".encode(), pickle.dumps(record, protocol=-1))
        transaction.put(b"length", pickle.dumps(len(frames), protocol=-1))
    env.close()
    return {"format": "lmdb", "src": str(directory)}


WRITERS = {"ase_db": write_ase_db, "ase_read": write_ase_read, "a2g_lmdb": write_a2g_lmdb}
SYSTEMS = {"molecules": ethanol_frames, "periodic": tio2_frames}


def fairchem_trainer(tmp_path, writer: str, system: str, piwsl: dict):
    suffix = ".db" if writer == "ase_db" else ""
    source, val = (
        WRITERS[writer](SYSTEMS[system](start), tmp_path / f"{writer}_{split}{suffix}")
        for split, start in (("train", 0), ("val", 8))
    )
    config = tiny_config(tmp_path, tmp_path / "run", piwsl)
    a2g = {"a2g_args": {"r_energy": True, "r_forces": True}} if writer != "a2g_lmdb" else {}
    config["dataset"] = {
        "train": source | a2g | {"transforms": config["dataset"]["train"]["transforms"]},
        "val": val | a2g,
    }
    config.pop("units")
    config["optim"].update({"batch_size": 4, "eval_batch_size": 4, "eval_every": 2})
    return make_trainer(config)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_undisplaced_copies_predict_as_fairchem_does(tmp_path, writer, system):
    trainer = fairchem_trainer(tmp_path, writer, system, {"method": "piwsl", "forward_mode": "batched"})
    batch = next(iter(trainer.train_loader))
    assert batch.pbc.shape == (3 * batch.natoms.numel(),)  # fairchem's layout, not piwsl's (B, 3)
    trainer.model.eval()
    with torch.no_grad():
        reference = OCPTrainer._forward(trainer, copy.deepcopy(batch))
        zeros = torch.zeros_like(batch.pos)
        subset = torch.tensor([1, 3])
        target = select_structures(batch, subset)
        stacked = trainer._forward_geometries([(batch, None), (batch, zeros), (target, None)])
        alone = OCPTrainer._forward(trainer, stack_geometries([(batch, zeros)]))
    atoms = torch.isin(batch.batch, subset)
    for outputs in (stacked[0], stacked[1], alone):
        torch.testing.assert_close(outputs["energy"], reference["energy"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outputs["forces"], reference["forces"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stacked[2]["energy"], reference["energy"][subset], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stacked[2]["forces"], reference["forces"][atoms], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_piwsl_trains_on_fairchem_datasets(tmp_path, writer):
    trainer = fairchem_trainer(tmp_path, writer, "molecules", {"method": "piwsl", "consistency_fraction": 0.5})
    trainer.config["optim"]["max_epochs"] = 1
    trainer.train(disable_eval_tqdm=True)
    assert trainer.step == 2 and (tmp_path / "run/checkpoints/test/best_checkpoint.pt").is_file()
