"""Bad inputs, one table row each: the exit code, the words of the one-line error, and no data lost.

Every row runs a command in-process (``scripts/prepare_data.py``, ``main.py`` or
``scripts/evaluate.py``) on a scratch directory laid out by ``scratch``; besides the exit code
and the message, each row checks that no file that existed before the command was deleted or
changed, and that no traceback was printed. Most rows fail before any training.
"""

from __future__ import annotations

import gc
import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from trainer_helpers import ETHANOL, ROOT, make_trainer, prepare_ethanol, tiny_config

from piwsl.cli import main as main_py
from piwsl.step_guard import TrainingDiverged


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"scripts/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PREPARE = load_script("prepare_data")
EVALUATE = load_script("evaluate")
RUN_EXPERIMENTS = load_script("run_experiments")


@dataclass
class Scratch:
    """A scratch directory holding a copy of the ethanol source, a prepared dataset, a checkpoint and configs."""

    root: Path
    data: Path
    checkpoint: Path

    @property
    def source(self) -> Path:
        return self.root / "sources/ethanol.npz"

    def config(self, edit: Callable[[dict], None] | None = None, name: str = "config.yml") -> Path:
        """The tiny training config (written to ``name``), after ``edit`` changes it in place."""
        config = tiny_config(self.data, self.root / "runs", {"method": "piwsl"})
        for key in ("run_dir", "identifier", "timestamp_id", "seed", "cpu"):
            config.pop(key)
        if edit is not None:
            edit(config)
        path = self.root / name
        path.write_text(yaml.safe_dump(config))
        return path

    def write(self, relative: str, content: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_ethanol(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> Path:
    """A checkpoint of the tiny PaiNN (untrained weights: only its format matters here)."""
    trainer = make_trainer(tiny_config(prepared, tmp_path_factory.mktemp("trained"), {"method": "baseline"}))
    return Path(trainer.save(checkpoint_file="checkpoint.pt", training_state=True))


@pytest.fixture
def scratch(tmp_path, prepared, trained) -> Scratch:
    (tmp_path / "sources").mkdir()
    shutil.copy(ETHANOL, tmp_path / "sources/ethanol.npz")
    shutil.copytree(prepared, tmp_path / "datasets/ethanol")
    shutil.copy(trained, tmp_path / "model.pt")
    return Scratch(tmp_path, tmp_path / "datasets/ethanol", tmp_path / "model.pt")


def prepare(scratch: Scratch, *argv: str | Path, out: str | Path = "datasets/new", src: Path | None = None) -> list:
    """``prepare_data.py rmd17`` arguments for a tiny split of the scratch source into ``out``."""
    out = scratch.root / out
    src = scratch.source if src is None else src
    return ["rmd17", "--src", src, "--out", out, "--train-size", "4", "--val-size", "4", "--test-size", "8", *argv]


@dataclass
class Case:
    """One bad input: the command (``prepare``, ``main``, ``evaluate``), its arguments, what must come out."""

    name: str
    command: str
    arguments: Callable[[Scratch], list]
    code: int
    words: tuple[str, ...]
    setup: Callable[[Scratch], None] = field(default=lambda scratch: None)


def nested_source(scratch: Scratch) -> None:
    scratch.write("datasets/new/ethanol.npz", scratch.source.read_bytes())


def train(scratch: Scratch, edit: Callable[[dict], None] | None = None, *extra: str | Path) -> list:
    """``main.py --mode train`` arguments for the tiny config after ``edit``."""
    return ["--mode", "train", "--config", scratch.config(edit), "--cpu", "--run-dir", scratch.root / "runs", *extra]


def edit(path: str, value) -> Callable[[dict], None]:
    """A config edit setting the dotted ``path`` to ``value`` (``...`` deletes it)."""

    def apply(config: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            config = config[key]
        if value is ...:
            del config[last]
        else:
            config[last] = value

    return apply


def rename(old: str, new: str) -> Callable[[dict], None]:
    def apply(config: dict) -> None:
        config[new] = config.pop(old)

    return apply


def evaluate(scratch: Scratch, checkpoint: Path | None = None, data: Path | None = None) -> list:
    return ["--checkpoint", checkpoint or scratch.checkpoint, "--data", data or scratch.data / "test"]


def write_records(directory: Path, edit_record: Callable | None = None, count: int = 6) -> Path:
    """An LMDB of ``count`` ethanol records (``edit_record(index, structure)`` may change them); no checks."""
    from dataclasses import replace

    from piwsl.data.formats import read_rmd17
    from piwsl.data.lmdb_writer import write_lmdb

    structures = read_rmd17(ETHANOL)[-count:] if count else []
    if edit_record is not None:
        structures = [edit_record(index, replace(structure)) for index, structure in enumerate(structures)]
    write_lmdb(structures, directory)
    return directory


def nan_force_in_record_3(scratch: Scratch) -> None:
    from dataclasses import replace

    def poison(index, structure):
        if index != 3:
            return structure
        forces = structure.forces.copy()
        forces[0, 0] = np.nan
        return replace(structure, forces=forces)

    shutil.rmtree(scratch.data / "train")
    write_records(scratch.data / "train", poison, count=16)


def truncated_checkpoint(scratch: Scratch) -> None:
    content = scratch.checkpoint.read_bytes()
    scratch.checkpoint.write_bytes(content[: len(content) // 2])


CASES = [
    # ---- prepare_data.py: never delete what piwsl did not write
    Case(
        "prepare: --out is the folder holding the source",
        "prepare",
        lambda s: prepare(s, out="sources"),
        2,
        ("--out", "contains the source", "ethanol.npz"),
    ),
    Case(
        "prepare: --out equals --src",
        "prepare",
        lambda s: prepare(s, out="sources/ethanol.npz"),
        2,
        ("contains the source",),
    ),
    Case(
        "prepare: --out is a folder holding the source, --overwrite",
        "prepare",
        lambda s: prepare(s, "--overwrite", src=s.root / "datasets/new/ethanol.npz"),
        2,
        ("contains the source",),
        nested_source,
    ),
    Case(
        "prepare: --out is an unrelated regular file",
        "prepare",
        lambda s: prepare(s, "--overwrite", out="notes.txt"),
        2,
        ("notes.txt", "not a directory", "never deletes"),
        lambda s: s.write("notes.txt", "my notes"),
    ),
    Case(
        "prepare: --out is the parent folder of prepared datasets",
        "prepare",
        lambda s: prepare(s, "--overwrite", out="datasets"),
        2,
        ("datasets", "not a dataset prepared by piwsl", "ethanol"),
    ),
    Case(
        "prepare: --out is a prepared dataset with a file of the user's in it",
        "prepare",
        lambda s: prepare(s, "--overwrite", out="datasets/ethanol"),
        2,
        ("only a dataset prepared by piwsl", "README.md"),
        lambda s: s.write("datasets/ethanol/README.md", "what these data are"),
    ),
    Case(
        "prepare: --out is a prepared dataset, no --overwrite",
        "prepare",
        lambda s: prepare(s, out="datasets/ethanol"),
        2,
        ("datasets/ethanol", "prepared dataset already", "--overwrite"),
    ),
    Case(
        "prepare: --out inside a source directory",
        "prepare",
        lambda s: ["tio2", "--src", s.root / "xsf", "--out", s.root / "xsf/out", "--train-size", "2"],
        2,
        ("inside the source directory",),
        lambda s: shutil.copytree(ROOT / "tests/data/tio2_xsf", s.root / "xsf"),
    ),
    Case(
        "prepare: --out below a regular file",
        "prepare",
        lambda s: prepare(s, out="notes.txt/new"),
        1,
        ("cannot write", "notes.txt"),
        lambda s: s.write("notes.txt", "my notes"),
    ),
    Case(
        "prepare: --val-size 0",
        "prepare",
        lambda s: prepare(s, "--val-size", "0"),
        2,
        ("--val-size 0", "positive"),
    ),
    Case(
        "prepare: --test-size 0",
        "prepare",
        lambda s: prepare(s, "--test-size", "0"),
        2,
        ("--test-size 0", "positive"),
    ),
    # ---- main.py: configs and overrides that were silently accepted
    Case(
        "main: misspelled section piswl",
        "main",
        lambda s: train(s, rename("piwsl", "piswl")),
        2,
        ("'piswl'", "'piwsl'"),
    ),
    Case(
        "main: unknown top-level key optimm",
        "main",
        lambda s: train(s, rename("optim", "optimm")),
        2,
        ("'optimm'", "'optim'"),
    ),
    Case(
        "main: unknown optim key in the file",
        "main",
        lambda s: train(s, edit("optim.lr_intial", 0.1)),
        2,
        ("optim.lr_intial", "'lr_initial'"),
    ),
    Case(
        "main: unknown dotted override",
        "main",
        lambda s: train(s, None, "--optim.max_stepz=5"),
        2,
        ("optim.max_stepz", "'max_steps'"),
    ),
    Case(
        "main: negative max_steps",
        "main",
        lambda s: train(s, None, "--optim.max_steps=-5"),
        2,
        ("optim.max_steps = -5", "positive"),
    ),
    Case(
        "main: negative max_epochs",
        "main",
        lambda s: train(s, None, "--optim.max_epochs=-1"),
        2,
        ("optim.max_epochs = -1", "integer >= 0"),
    ),
    Case(
        "main: zero batch size",
        "main",
        lambda s: train(s, None, "--optim.batch_size=0"),
        2,
        ("optim.batch_size = 0", "positive"),
    ),
    Case(
        "main: override without =value",
        "main",
        lambda s: train(s, None, "--optim.max_steps", "5"),
        2,
        ("--optim.max_steps", "no value", "=VALUE"),
    ),
    Case("main: misspelled flag", "main", lambda s: train(s, None, "--cpus"), 2, ("--cpus", "'--cpu'")),
    Case(
        "main: piwsl section not a mapping",
        "main",
        lambda s: train(s, edit("piwsl", "fast")),
        2,
        ("'piwsl'", "mapping"),
    ),
    Case(
        "main: unknown backbone",
        "main",
        lambda s: train(s, edit("model.name", "paiin")),
        2,
        ("'paiin'", "'painn'", "registered", "schnet"),
    ),
    # ---- main.py: tracebacks that became one line
    Case(
        "main: unknown model key in an override",
        "main",
        lambda s: train(s, None, "--model.hidden_channel=16"),
        2,
        ("model.hidden_channel", "'hidden_channels'"),
    ),
    Case(
        "main: YAML syntax error",
        "main",
        lambda s: ["--mode", "train", "--config", s.write("bad.yml", "model: [painn\n")],
        2,
        ("bad.yml", "not valid YAML", "line 2"),
    ),
    Case(
        "main: YAML syntax error in an included file",
        "main",
        lambda s: ["--mode", "train", "--config", s.write("top.yml", "includes: [inc.yml]\n")],
        2,
        ("inc.yml", "not valid YAML"),
        lambda s: s.write("inc.yml", "optim: {lr: [\n"),
    ),
    Case(
        "main: config that is not a mapping",
        "main",
        lambda s: ["--mode", "train", "--config", s.write("list.yml", "- a\n- b\n")],
        2,
        ("list.yml", "mapping"),
    ),
    Case(
        "main: --mode predict without a test set",
        "main",
        lambda s: ["--mode", "predict", "--config", s.config(), "--cpu", "--checkpoint", s.checkpoint],
        2,
        ("--mode predict", "dataset.test.src"),
    ),
    Case(
        "main: non-finite force in the training set",
        "main",
        lambda s: train(s),
        2,
        ("train", "record 3", "NaN", "forces"),
        nan_force_in_record_3,
    ),
    Case(
        "main: empty training set",
        "main",
        lambda s: train(s),
        2,
        ("train", "holds no structures"),
        lambda s: (shutil.rmtree(s.data / "train"), write_records(s.data / "train", count=0)),
    ),
    Case(
        "main: missing checkpoint",
        "main",
        lambda s: train(s, None, "--checkpoint", s.root / "absent.pt"),
        2,
        ("checkpoint not found", "absent.pt"),
    ),
    Case(
        "main: truncated checkpoint",
        "main",
        lambda s: train(s, None, "--checkpoint", s.checkpoint),
        2,
        ("model.pt", "unreadable", "truncated"),
        truncated_checkpoint,
    ),
    Case(
        "main: checkpoint of another size",
        "main",
        lambda s: train(s, None, "--checkpoint", s.checkpoint, "--model.hidden_channels=16"),
        2,
        ("model.pt", "does not fit this model", "painn"),
    ),
    # ---- scripts/evaluate.py
    Case(
        "evaluate: missing checkpoint",
        "evaluate",
        lambda s: evaluate(s, s.root / "absent.pt"),
        2,
        ("checkpoint not found",),
    ),
    Case(
        "evaluate: not a checkpoint",
        "evaluate",
        lambda s: evaluate(s, s.write("notes.pt", "hello")),
        2,
        ("notes.pt", "not a checkpoint"),
    ),
    Case(
        "evaluate: a torch file that is no checkpoint",
        "evaluate",
        lambda s: evaluate(s, s.root / "tensor.pt"),
        2,
        ("tensor.pt", "not a piwsl/fairchem checkpoint"),
        lambda s: __import__("torch").save({"a": 1}, s.root / "tensor.pt"),
    ),
    Case(
        "evaluate: empty split",
        "evaluate",
        lambda s: evaluate(s, None, s.root / "empty"),
        2,
        ("empty", "no structures"),
        lambda s: write_records(s.root / "empty", count=0),
    ),
]
CASES.append(
    Case(
        "run_experiments: grid with a YAML syntax error",
        "grid",
        lambda s: ["--grid", s.write("grid.yml", "name: g\ndatasets: {a: [\n"), "--list"],
        2,
        ("grid.yml", "not valid YAML", "line"),
    )
)
CASES.append(
    Case(
        "main: run dir below a regular file",
        "main",
        lambda s: ["--mode", "train", "--config", s.config(), "--cpu", "--run-dir", s.root / "notes.txt/runs"],
        1,
        ("cannot access", "notes.txt", "not a directory"),
        lambda s: s.write("notes.txt", "mine"),
    )
)
if not __import__("torch").cuda.is_available():
    CASES.append(
        Case(
            "main: --num-gpus 2 without --cpu and without CUDA",
            "main",
            lambda s: ["--mode", "train", "--config", s.config(), "--num-gpus", "2"],
            2,
            ("--num-gpus 2", "--cpu"),
        )
    )


def snapshot(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


def run_command(command: str, arguments: list) -> int:
    argv = [str(argument) for argument in arguments]
    if command == "prepare":
        return PREPARE.main(argv)
    if command == "evaluate":
        return EVALUATE.main(argv)
    if command == "grid":
        return RUN_EXPERIMENTS.main(argv)
    return main_py(argv)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_clear_line_and_destroys_nothing(case: Case, scratch: Scratch, capsys):
    case.setup(scratch)
    arguments = case.arguments(scratch)
    before = snapshot(scratch.root)
    code = run_command(case.command, arguments)
    captured = capsys.readouterr()
    assert code == case.code, captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out
    message = captured.err.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for word in case.words:
        assert word in message, f"{word!r} not in {message!r}"
    after = snapshot(scratch.root)
    changed = sorted(str(path.relative_to(scratch.root)) for path in before if after.get(path) != before[path])
    assert not changed, f"deleted or changed: {changed}"


# ------------------------------------------------------------------------------ prepare_data.py: what is allowed
def test_overwrite_replaces_a_prepared_dataset_and_stale_staging_is_removed(scratch, capsys):
    out = scratch.data
    old_sizes = (out / "metadata.json").read_text()
    stale = scratch.root / "datasets/.ethanol.k1ll3d.partial"
    (stale / "train").mkdir(parents=True)
    other_target = scratch.root / "datasets/.ethanol.v2.abc.partial"  # staging of a dataset named ethanol.v2
    other_target.mkdir()
    assert PREPARE.main([str(a) for a in prepare(scratch, "--overwrite", out=out)]) == 0
    assert (out / "metadata.json").read_text() != old_sizes
    assert not stale.exists() and other_target.exists()
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "split_indices.json", "test", "train", "val"]
    leftovers = [p.name for p in (scratch.root / "datasets").iterdir() if p.name.endswith((".partial", ".old"))]
    assert leftovers == [other_target.name]


def test_a_dataset_renamed_aside_by_a_killed_overwrite_is_restored(scratch, capsys):
    """A kill between replace_directory's two renames leaves the old dataset in .NAME.*.old/NAME only."""
    out = scratch.data
    metadata = (out / "metadata.json").read_text()
    aside = out.parent / f".{out.name}.k1ll3d.old"
    aside.mkdir()
    out.rename(aside / out.name)
    with pytest.warns(UserWarning, match="interrupted; restored the previous copy"):
        assert PREPARE.main([str(a) for a in prepare(scratch, out=out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err, "the restored dataset is not overwritten unasked"
    assert (out / "metadata.json").read_text() == metadata and not aside.exists()


def test_an_empty_output_directory_is_used(scratch):
    (scratch.root / "datasets/empty").mkdir()
    assert PREPARE.main([str(a) for a in prepare(scratch, out="datasets/empty")]) == 0
    assert (scratch.root / "datasets/empty/metadata.json").is_file()


def test_a_live_conversion_keeps_its_staging_directory(scratch):
    import fcntl
    import os

    from piwsl.data.lmdb_writer import remove_stale_staging

    live = scratch.root / "datasets/.new.l1ve.partial"
    live.mkdir()
    descriptor = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        assert remove_stale_staging(scratch.root / "datasets/new") == []
        assert live.exists()
    finally:
        os.close(descriptor)
    assert remove_stale_staging(scratch.root / "datasets/new") == [live]


def test_lmdb_writer_never_replaces_a_foreign_directory(tmp_path):
    from piwsl.data.formats import read_rmd17
    from piwsl.data.lmdb_writer import OutputExistsError, write_lmdb

    (tmp_path / "db").mkdir()
    (tmp_path / "db/thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="thesis.tex"):
        write_lmdb(read_rmd17(ETHANOL)[:2], tmp_path / "db")
    assert (tmp_path / "db/thesis.tex").read_text() == "years of work"


def test_non_finite_labels_are_rejected_naming_the_record(scratch, capsys):
    from piwsl.data.splits import make_split

    split = make_split(60, 4, 4, 8, 0)
    assert 59 not in {*split.train, *split.val, *split.test}  # a record that no split takes is checked too
    arrays = dict(np.load(scratch.source))
    arrays["forces"][59, 2, 1] = np.nan
    np.savez(scratch.root / "sources/nan.npz", **arrays)
    arguments = prepare(scratch, src=scratch.root / "sources/nan.npz")
    code = PREPARE.main([str(a) for a in arguments])
    assert code == 2 and "nan.npz[59]: forces contains NaN" in capsys.readouterr().err


# ------------------------------------------------------------------------------ main.py: faults during a run
def test_a_second_process_on_the_same_run_exits_naming_the_holder(scratch, capsys):
    import os

    from piwsl.run_lock import locked_run

    arguments = train(scratch, None, "--timestamp-id", "busy")
    with locked_run(scratch.root / "runs/checkpoints/busy"):
        assert main_py([str(a) for a in arguments]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"being trained by process {os.getpid()}" in message and "busy" in message


def test_a_reused_run_id_with_other_settings_is_refused_naming_the_keys(scratch, capsys):
    import torch

    first = train(scratch, edit("optim.max_epochs", 1), "--timestamp-id", "reused")
    assert main_py([str(a) for a in first]) == 0
    checkpoint = scratch.root / "runs/checkpoints/reused/checkpoint.pt"
    trained = torch.load(checkpoint, weights_only=False)
    assert trained["step"] == 4 and len(trained["config"]["piwsl_run_settings"]["hash"]) == 16
    changed = train(scratch, edit("optim.max_epochs", 1), "--timestamp-id", "reused", "--optim.lr_initial=0.01")
    capsys.readouterr()
    gc.collect()  # the first run's LMDB handles (one per file and process)
    assert main_py([str(a) for a in changed]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "optim.lr_initial" in message and "--timestamp-id" in message and "optim.max_epochs" not in message
    gc.collect()
    assert main_py([str(a) for a in first]) == 0, "the same settings resume (here: a finished run)"
    assert torch.load(checkpoint, weights_only=False)["step"] == 4


def test_a_read_only_output_is_one_line_naming_the_path(scratch, capsys, monkeypatch):
    import errno

    import piwsl.run_lock

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(piwsl.run_lock.Path, "mkdir", read_only)
    assert main_py([str(a) for a in train(scratch)]) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: cannot write") and "runs/checkpoints" in message and "read-only" in message


def test_a_full_disk_while_saving_names_the_checkpoint_and_keeps_the_old_one(prepared, tmp_path, monkeypatch):
    import torch

    from piwsl.checkpointing import OutputError, read_checkpoint

    trainer = make_trainer(tiny_config(prepared, tmp_path, {"method": "baseline"}))
    path = trainer.save(checkpoint_file="checkpoint.pt", training_state=True)

    def disk_full(state, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . "
            "PytorchStreamWriter failed writing file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", disk_full)
    trainer.step = 7
    with pytest.raises(
        OutputError, match=r"cannot write checkpoint .*checkpoint\.pt \(.*file write failed\); .* MiB free"
    ):
        trainer.save(checkpoint_file="checkpoint.pt", training_state=True)
    monkeypatch.undo()
    assert read_checkpoint(path)["step"] == 0 and not Path(f"{path}.partial").exists()


# ------------------------------------------------------------------------------ non-finite steps
def finite_weights(state: dict) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in state.values())


def test_a_step_with_a_nan_label_is_skipped_and_the_record_named(prepared, tmp_path, caplog):
    trainer = make_trainer(tiny_config(prepared, tmp_path, {"method": "piwsl", "max_nonfinite_steps": 2}))
    trainer.model.train()
    batch = next(iter(trainer.train_loader))
    poisoned = batch.clone()
    poisoned.forces[poisoned.batch == 1] = float("nan")
    before = {k: v.clone() for k, v in trainer._unwrapped_model.state_dict().items()}
    for step, (data, skipped) in enumerate([(poisoned, 1), (batch, 1), (poisoned, 2)], start=1):
        trainer.step = step
        trainer._backward(trainer._compute_loss(trainer._forward(data.clone()), data))
        assert trainer.skipped_steps == skipped
        state = trainer._unwrapped_model.state_dict()
        same = all(torch.equal(state[k], before[k]) for k in before)
        assert same == (data is poisoned) and finite_weights(state)
        before = {k: v.clone() for k, v in state.items()}
    assert f"non-finite labels in training record(s) [{int(batch.sid[1])}]" in caplog.text
    trainer.step = 4
    with pytest.raises(TrainingDiverged, match=r"non-finite in 2 consecutive steps.*record\(s\) \[\d+\]"):
        trainer._backward(trainer._compute_loss(trainer._forward(poisoned.clone()), poisoned))


def test_a_nan_label_fitted_into_a_normalizer_is_refused(scratch, monkeypatch):
    import piwsl.cli
    from piwsl.dataset_checks import DatasetError

    nan_force_in_record_3(scratch)
    monkeypatch.setattr(piwsl.cli, "check_datasets", lambda *args: None)  # as with fairchem's own CLI
    with pytest.raises(DatasetError, match="forces normalizer's rmsd .* is nan: the training set has non-finite"):
        make_trainer(tiny_config(scratch.data, scratch.root, {"method": "piwsl"}))


@pytest.mark.parametrize("method", ["baseline", "piwsl"])
def test_a_diverging_learning_rate_stops_with_an_error_and_saves_no_nan(scratch, capsys, method):
    def settings(config: dict) -> None:
        config["piwsl"] = {"method": method, "max_nonfinite_steps": 3}
        config["optim"]["checkpoint_every"] = 1

    arguments = train(scratch, settings, "--optim.lr_initial=1000", "--timestamp-id", "lr")
    assert main_py([str(a) for a in arguments]) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "in 3 consecutive steps" in message and "optim.lr_initial" in message and "1000" in message
    saved = list((scratch.root / "runs/checkpoints/lr").glob("*checkpoint.pt"))
    assert saved
    for path in saved:
        assert finite_weights(torch.load(path, weights_only=False)["state_dict"]), path


def test_every_shipped_config_passes_the_key_checks():
    from fairchem.core.common.utils import load_config

    from piwsl.cli import check_model_name
    from piwsl.config_checks import check_config

    files = sorted((ROOT / "configs").rglob("*.yml"))
    assert len(files) > 20
    for path in files:
        config, _, _ = load_config(path)
        check_config(config)
        if "model" in config and "name" in config["model"]:
            check_model_name(config)


# ------------------------------------------------------------------------------ units
def test_hartree_energies_in_an_rmd17_file_are_an_error(scratch, capsys):
    from piwsl.data.units import HARTREE_TO_KCAL_PER_MOL

    arrays = dict(np.load(scratch.source))
    arrays["energies"] = arrays["energies"] / HARTREE_TO_KCAL_PER_MOL
    np.savez(scratch.root / "sources/hartree.npz", **arrays)
    arguments = ["rmd17", "--src", scratch.root / "sources/hartree.npz", "--out", scratch.root / "h"]
    assert PREPARE.main([str(a) for a in arguments + ["--train-size", "20", "--val-size", "10"]]) == 2
    message = capsys.readouterr().err.strip()
    assert "hartree.npz: energies vary by" in message and "larger unit than kcal/mol" in message
    assert "Hartree: 627.5x" in message and len(message.splitlines()) == 1


def test_kcal_per_mol_read_as_ev_is_a_warning_with_the_numbers(tmp_path, capsys):
    from ase.io import read, write

    from piwsl.data.units import EV_TO_KCAL_PER_MOL

    frames = read(ROOT / "tests/data/ethanol_gfn2xtb.extxyz", index=":")
    for atoms in frames:  # the same labels written in kcal/mol, as a user's file might hold them
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info["energy"] = energy * EV_TO_KCAL_PER_MOL
        atoms.arrays["forces"] = forces * EV_TO_KCAL_PER_MOL
    write(tmp_path / "kcal.extxyz", frames)
    arguments = ["ase", "--src", tmp_path / "kcal.extxyz", "--out", tmp_path / "out", "--train-size", "4"]
    assert PREPARE.main([str(a) for a in arguments + ["--val-size", "2", "--self-energies", "none"]]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "implausibly large" in err and "kcal/mol/Å read as eV/Å, the RMS is" in err


def test_bundled_data_raise_no_unit_warnings(tmp_path):
    from piwsl.data.formats import Rmd17Source
    from piwsl.data.prepare import prepare_dataset

    metadata = prepare_dataset(Rmd17Source(ETHANOL), tmp_path / "e", 20, 10, 20, 0)
    assert metadata["unit_warnings"] == []


def test_the_experiment_runner_never_replaces_a_foreign_directory(tmp_path):
    from test_experiments import grid_content, paths_in

    from piwsl.data.lmdb_writer import OutputExistsError
    from piwsl.experiments import runner
    from piwsl.experiments.grid import parse_grid

    paths = paths_in(tmp_path)
    run = parse_grid(grid_content(tmp_path)).runs[0]
    split = paths.data(run)
    split.mkdir(parents=True)
    (split / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="thesis.tex"):
        runner.prepare_split(run, paths)
    assert (split / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_an_error_in_a_ddp_rank_is_one_line_from_rank_0_and_its_exit_code(monkeypatch, capsys, rank, printed):
    import piwsl.cli
    from piwsl.checkpointing import CheckpointError

    def failing(config):
        raise CheckpointError("checkpoint x.pt is unreadable")

    monkeypatch.setattr(piwsl.cli, "run_config", failing)
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as stop:
        piwsl.cli.run_rank({})
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: checkpoint x.pt is unreadable\n" if printed else "")
