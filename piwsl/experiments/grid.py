"""Grid files: datasets x backbones x methods x N_train x seeds, expanded into runs.

A grid file (YAML, see ``experiments/grids/``) names its building blocks once and combines them
in studies::

    name: cpu_study
    datasets:                      # how to prepare each data set, where its run configs live
      aspirin: {format: rmd17, src: data/rmd17_aspirin_gfn2xtb_500K.npz, configs: configs/rmd17,
                test_size: 500}
    backbones:                     # file prefix of the run configs; optionally a smaller model file
      painn: {config: painn, model: configs/models/painn_small.yml, label: PaiNN}
    methods:                       # file suffix of the run configs, plus overrides
      baseline: {config: baseline, label: Baseline}
      pitc_only: {config: piwsl, label: PITC, overrides: {piwsl: {c_pisc: 0}}}
    defaults: {seeds: [0, 1, 2], train_sizes: [100, 1000], max_steps: 1500}
    studies:
      table1: {datasets: [aspirin], backbones: [painn], methods: [baseline, pitc_only]}

Each run's config is ``<configs>/<backbone.config>_<method.config>.yml`` (an existing config of
this repository; ``configs`` is the method's directory if it names one, else the data set's) with
overrides merged on top, in this order: the backbone's model file (its ``model`` and ``optim``
settings, except those the base config's own text fixes), the data set's, backbone's, method's,
defaults' and study's ``overrides``, then the data paths and ``optim.max_steps``. Relative paths
are relative to the repository root. A run is named
``<dataset>-<backbone>-<method>-n<N_train>-s<seed>[-<study tag>]``; a run that two studies share
is trained once (its settings must then agree). A method may set its own step cap (``max_steps``)
and take its training-time budget from another method's finished run (``wall_clock_from``, see
``MethodSpec``).

Pretraining and fine-tuning: a method with ``finetune_from`` starts its runs from the
best-validation checkpoint of another run of the same grid (``main.py``'s ``finetune`` section)::

    methods:
      pretrain: {config: baseline}
      ft_taylor:
        config: piwsl_energy_only_direct
        finetune_from: "molecules-{backbone}-pretrain-n3000-s{seed}"   # a run name of this grid
        finetune: {freeze: []}        # optional: the rest of main.py's finetune section

The template may use ``{dataset}``, ``{backbone}``, ``{method}``, ``{train_size}``, ``{seed}`` and
``{tag}`` (the fine-tuning run's own values); the name it gives must be a run of some study of the
grid (else a one-line error naming the closest run names). The runner trains pretraining runs
before the runs that fine-tune from them, refuses to start a fine-tuning run whose pretraining
run is not finished, and puts the digest of the pretrained checkpoint's weights (recorded in the
pretraining run's results) into the run's config hash: a pretraining run retrained to other weights
makes its fine-tuning runs stale. Checkpoints are not committed: where a fine-tuning run is to
train and its pretraining run's checkpoint is not on the machine (a fresh clone), the runner trains
that run again first; on the CPU it ends with the same weights, and finished fine-tuning runs stay
current.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


class GridError(ValueError):
    """A grid file that cannot be expanded; the message names the key and what is allowed."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to prepare one data set (``scripts/prepare_data.py``) and where its run configs are.

    ``test_size`` is one number or a mapping N_train -> number (a small source may not hold the
    same test set beside every training size; the test set is drawn first, so a smaller one is the
    start of a larger one of the same seed).
    ``val_size``/``test_size`` default to prepare_data.py's protocol (N_train but at least 100;
    10,000 or 1,000); ``split_seed`` fixes the split for every run seed (default: the run's seed).
    """

    name: str
    format: str
    src: str
    configs: str
    label: str
    val_size: int | None = None
    test_size: int | dict[int, int] | None = None
    split_seed: int | None = None
    prepare_args: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)

    def test_size_for(self, train_size: int) -> int | None:
        """The requested test size at ``train_size`` (``None``: prepare_data.py's default)."""
        if isinstance(self.test_size, dict):
            return self.test_size[train_size]
        return self.test_size


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone: the prefix of its run configs and, optionally, a model file replacing its size."""

    name: str
    config: str
    label: str
    model: str | None = None
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A training method: the suffix of its run configs, overrides, and how tables label it.

    ``group`` puts the method under a column group of its own (e.g. FB/GB in Table 3);
    ``energy_only`` trains on a split without force labels (``prepare_data.py --energy-only``);
    ``configs`` takes the run configs from this directory instead of the data set's;
    ``max_steps`` (a number or N_train -> number) replaces the study's step cap for this method;
    ``wall_clock_from`` names another method of the study whose finished run of the same data set,
    backbone, N_train and seed gives this run its training-time budget (``optim.max_wall_seconds``,
    resolved by the runner: the equal-wall-clock comparison).
    ``finetune_from`` is the run-name template of the run whose checkpoint its runs start from and
    ``finetune`` further settings of main.py's ``finetune`` section (see the module docstring).
    """

    name: str
    config: str
    label: str
    group: str | None = None
    energy_only: bool = False
    configs: str | None = None
    overrides: dict = field(default_factory=dict)
    max_steps: int | dict[int, int] | None = None
    wall_clock_from: str | None = None
    finetune_from: str | None = None
    finetune: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StudySpec:
    """One table or figure of the paper: which combinations to run and how to present them."""

    name: str
    title: str
    datasets: tuple[str, ...]
    backbones: tuple[str, ...]
    methods: tuple[str, ...]
    train_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    max_steps: dict[int, int]
    reference: str | None = None
    tag: str | None = None
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """One training run; ``overrides`` already holds everything merged onto the base config.

    ``pretrained`` is the run whose best checkpoint this run is fine-tuned from (``None``: from scratch).
    """

    name: str
    dataset: DatasetSpec
    backbone: BackboneSpec
    method: MethodSpec
    train_size: int
    seed: int
    max_steps: int
    tag: str | None
    overrides: dict
    #: The run whose training time is this run's budget (``MethodSpec.wall_clock_from``).
    wall_clock_source: RunSpec | None = None
    pretrained: RunSpec | None = None

    @property
    def base_config(self) -> Path:
        """The repository config this run starts from."""
        directory = self.method.configs or self.dataset.configs
        return resolve(directory) / f"{self.backbone.config}_{self.method.config}.yml"

    @property
    def split_seed(self) -> int:
        return self.seed if self.dataset.split_seed is None else self.dataset.split_seed

    @property
    def data_name(self) -> str:
        """Directory name of the prepared split this run trains on."""
        suffix = "-energy_only" if self.method.energy_only else ""
        return f"{self.dataset.name}-n{self.train_size}-s{self.split_seed}{suffix}"

    def describe(self) -> dict[str, Any]:
        """The fields a results file and the aggregation identify a run by."""
        return {
            "run": self.name,
            "dataset": self.dataset.name,
            "dataset_label": self.dataset.label,
            "backbone": self.backbone.name,
            "backbone_label": self.backbone.label,
            "method": self.method.name,
            "method_label": self.method.label,
            "method_group": self.method.group,
            "energy_only": self.method.energy_only,
            "train_size": self.train_size,
            "seed": self.seed,
            "split_seed": self.split_seed,
            "max_steps": self.max_steps,
            "tag": self.tag,
            "wall_clock_from": None if self.wall_clock_source is None else self.wall_clock_source.name,
            "finetune_from": None if self.pretrained is None else self.pretrained.name,
        }


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: its studies and the runs they expand into (each run once)."""

    name: str
    description: str
    studies: tuple[StudySpec, ...]
    runs: tuple[RunSpec, ...]
    study_runs: dict[str, tuple[str, ...]]

    def describe(self) -> dict[str, Any]:
        """What the aggregation needs to lay out tables: studies, their runs, labels and order."""
        runs = {run.name: run for run in self.runs}
        return {
            "name": self.name,
            "description": self.description,
            "studies": [
                {
                    "name": study.name,
                    "title": study.title,
                    "datasets": list(study.datasets),
                    "backbones": list(study.backbones),
                    "methods": list(study.methods),
                    "train_sizes": list(study.train_sizes),
                    "seeds": list(study.seeds),
                    "reference": study.reference,
                    "tag": study.tag,
                    "runs": list(self.study_runs[study.name]),
                    "labels": _labels([runs[name] for name in self.study_runs[study.name]]),
                }
                for study in self.studies
            ],
        }


def _labels(runs: list[RunSpec]) -> dict[str, dict[str, str | None]]:
    """Display names of the runs' data sets, backbones and methods, and the methods' column groups."""
    return {
        "datasets": {run.dataset.name: run.dataset.label for run in runs},
        "backbones": {run.backbone.name: run.backbone.label for run in runs},
        "methods": {run.method.name: run.method.label for run in runs},
        "groups": {run.method.name: run.method.group for run in runs},
    }


def resolve(path: str | Path) -> Path:
    """A grid path: absolute as given, else relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge (values of ``update`` win), as fairchem merges included configs."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_DATASET_KEYS = {
    "format",
    "src",
    "configs",
    "label",
    "val_size",
    "test_size",
    "split_seed",
    "prepare_args",
    "overrides",
}
_BACKBONE_KEYS = {"config", "label", "model", "overrides"}
_METHOD_KEYS = {
    "config", "label", "group", "energy_only", "configs", "overrides", "max_steps", "wall_clock_from",
    "finetune_from", "finetune",
}  # fmt: skip
#: Placeholders of a ``finetune_from`` template (the fine-tuning run's own values).
FINETUNE_FIELDS = ("dataset", "backbone", "method", "train_size", "seed", "tag")
_RUN_SETTING_KEYS = {"seeds", "train_sizes", "max_steps", "overrides"}
_STUDY_KEYS = _RUN_SETTING_KEYS | {"title", "datasets", "backbones", "methods", "reference", "tag"}
_GRID_KEYS = {"name", "description", "datasets", "backbones", "methods", "defaults", "studies"}


def _check_keys(section: Any, allowed: set[str], where: str, required: tuple[str, ...] = ()) -> dict:
    if not isinstance(section, dict):
        raise GridError(f"{where} must be a mapping, not {type(section).__name__}")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise GridError(f"unknown key(s) in {where}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    missing = [key for key in required if key not in section]
    if missing:
        raise GridError(f"{where} lacks required key(s): {', '.join(missing)}")
    return section


def _check_finetune(method: dict, key: str) -> bool:
    """Check a method's ``finetune_from`` (a string) and ``finetune`` (main.py's section less the checkpoint)."""
    template = method.get("finetune_from")
    if template is not None and not isinstance(template, str):
        raise GridError(f"methods.{key}.finetune_from = {template!r}; allowed: a run-name template (a string)")
    section = method.get("finetune", {})
    if not isinstance(section, dict):
        raise GridError(f"methods.{key}.finetune must be a mapping (freeze:, weights:, ...)")
    if section and template is None:
        raise GridError(f"methods.{key}.finetune is set without finetune_from (the run to fine-tune from)")
    if "checkpoint" in section:
        raise GridError(f"methods.{key}.finetune.checkpoint: the runner sets it from finetune_from; remove it")
    return True


def _max_steps(value: Any, train_sizes: tuple[int, ...], where: str) -> dict[int, int]:
    """``max_steps``: one number for every N_train, or a mapping N_train -> steps."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {n: value for n in train_sizes}
    if isinstance(value, dict):
        steps = {int(n): int(s) for n, s in value.items()}
        missing = [n for n in train_sizes if n not in steps]
        if missing:
            raise GridError(f"{where}.max_steps has no entry for N_train {missing}")
        return steps
    raise GridError(f"{where}.max_steps = {value!r}; allowed: an integer or a mapping N_train -> integer")


def _int_tuple(value: Any, where: str) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise GridError(f"{where} = {value!r}; allowed: an integer or a non-empty list of integers")
    return tuple(values)


def _names(value: Any, known: dict, where: str) -> tuple[str, ...]:
    names = value if isinstance(value, list) else [value]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise GridError(f"{where} names unknown entries {unknown}; defined: {', '.join(known)}")
    return tuple(names)


def parse_grid(content: dict, name: str = "grid") -> Grid:
    """Check a grid mapping (as read from YAML) and expand it into runs."""
    _check_keys(content, _GRID_KEYS, "the grid file", ("datasets", "backbones", "methods", "studies"))
    datasets = {
        key: DatasetSpec(
            name=key,
            label=str(value.get("label", key)),
            prepare_args=tuple(str(a) for a in value.get("prepare_args", [])),
            **{k: v for k, v in value.items() if k not in ("label", "prepare_args")},
        )
        for key, value in content["datasets"].items()
        if _check_keys(value, _DATASET_KEYS, f"datasets.{key}", ("format", "src", "configs"))
    }
    backbones = {
        key: BackboneSpec(
            name=key, label=str(value.get("label", key)), **{k: v for k, v in value.items() if k != "label"}
        )
        for key, value in content["backbones"].items()
        if _check_keys(value, _BACKBONE_KEYS, f"backbones.{key}", ("config",))
    }
    methods = {
        key: MethodSpec(
            name=key, label=str(value.get("label", key)), **{k: v for k, v in value.items() if k != "label"}
        )
        for key, value in content["methods"].items()
        if _check_keys(value, _METHOD_KEYS, f"methods.{key}", ("config",)) and _check_finetune(value, key)
    }
    for key, method in methods.items():
        source = method.wall_clock_from
        if source is not None and (source not in methods or methods[source].wall_clock_from is not None):
            raise GridError(
                f"methods.{key}.wall_clock_from = {source!r}; allowed: a method without wall_clock_from of its own "
                f"({', '.join(m for m in methods if methods[m].wall_clock_from is None)})"
            )
    defaults = _check_keys(content.get("defaults", {}), _RUN_SETTING_KEYS, "defaults")
    studies = []
    for key, value in content["studies"].items():
        section = {**defaults, **_check_keys(value, _STUDY_KEYS, f"studies.{key}")}
        section["overrides"] = merge(defaults.get("overrides", {}), value.get("overrides", {}))
        where = f"studies.{key}"
        for required in ("datasets", "backbones", "methods", "train_sizes", "seeds", "max_steps"):
            if required not in section:
                raise GridError(f"{where} lacks '{required}' (and the grid's defaults do not set it)")
        train_sizes = _int_tuple(section["train_sizes"], f"{where}.train_sizes")
        method_names = _names(section["methods"], methods, f"{where}.methods")
        reference = section.get("reference")
        if reference is not None and reference not in method_names:
            raise GridError(f"{where}.reference = {reference!r} is not one of the study's methods {method_names}")
        studies.append(
            StudySpec(
                name=key,
                title=str(section.get("title", key)),
                datasets=_names(section["datasets"], datasets, f"{where}.datasets"),
                backbones=_names(section["backbones"], backbones, f"{where}.backbones"),
                methods=method_names,
                train_sizes=train_sizes,
                seeds=_int_tuple(section["seeds"], f"{where}.seeds"),
                max_steps=_max_steps(section["max_steps"], train_sizes, where),
                reference=reference,
                tag=section.get("tag"),
                overrides=section["overrides"],
            )
        )
    runs: dict[str, RunSpec] = {}
    study_runs: dict[str, tuple[str, ...]] = {}
    for study in studies:
        names = []
        for run in expand_study(study, datasets, backbones, methods):
            if run.name in runs and runs[run.name] != run:
                raise GridError(
                    f"run {run.name} of study {study.name} differs from the run of that name in another study; "
                    "give one of the studies a 'tag'"
                )
            runs.setdefault(run.name, run)
            names.append(run.name)
        study_runs[study.name] = tuple(names)
    for run in runs.values():
        source = run.wall_clock_source
        if source is not None and runs.get(source.name) != source:
            raise GridError(
                f"run {run.name} takes its wall-clock budget from run {source.name}, which no study of the grid "
                f"runs with the same settings; add method {source.method.name} to the study"
            )
    runs = link_pretrained(runs)
    return Grid(
        name=str(content.get("name", name)),
        description=str(content.get("description", "")),
        studies=tuple(studies),
        runs=tuple(runs.values()),
        study_runs=study_runs,
    )


def finetune_source(run: RunSpec) -> str | None:
    """The name of the run ``run`` fine-tunes from, its method's ``finetune_from`` template filled in."""
    template = run.method.finetune_from
    if template is None:
        return None
    values = {
        "dataset": run.dataset.name,
        "backbone": run.backbone.name,
        "method": run.method.name,
        "train_size": run.train_size,
        "seed": run.seed,
        "tag": run.tag or "",
    }
    try:
        return template.format(**values)
    except KeyError as error:
        raise GridError(
            f"methods.{run.method.name}.finetune_from = {template!r} has the unknown placeholder {{{error.args[0]}}}; "
            f"allowed: {', '.join('{' + name + '}' for name in FINETUNE_FIELDS)}"
        ) from None
    except (IndexError, ValueError) as error:
        raise GridError(
            f"methods.{run.method.name}.finetune_from = {template!r}: not a name template ({error})"
        ) from None


def link_pretrained(runs: dict[str, RunSpec]) -> dict[str, RunSpec]:
    """The runs with ``pretrained`` set to the run their ``finetune_from`` names (which must be in ``runs``)."""
    linked: dict[str, RunSpec] = {}

    def link(name: str, chain: tuple[str, ...]) -> RunSpec:
        if name in linked:
            return linked[name]
        run = runs[name]
        source = finetune_source(run)
        if source is None:
            linked[name] = run
            return run
        if source not in runs:
            close = difflib.get_close_matches(source, list(runs), n=3)
            raise GridError(
                f"run {name}: methods.{run.method.name}.finetune_from gives {source!r}, which is not a run of this "
                f"grid" + (f"; closest: {', '.join(close)}" if close else "")
            )
        if source in chain or source == name:
            raise GridError(f"finetune_from makes a cycle: {' -> '.join((*chain, name, source))}")
        linked[name] = dataclasses.replace(run, pretrained=link(source, (*chain, name)))
        return linked[name]

    for name in runs:
        link(name, ())
    return {name: linked[name] for name in runs}  # in the studies' order


def pretraining_first(runs: list[RunSpec]) -> list[RunSpec]:
    """``runs`` reordered so that every run comes after the runs it fine-tunes from (otherwise in order)."""
    names = {run.name for run in runs}
    ordered: list[RunSpec] = []
    placed: set[str] = set()

    def place(run: RunSpec) -> None:
        if run.name in placed:
            return
        if run.pretrained is not None and run.pretrained.name in names:
            place(next(r for r in runs if r.name == run.pretrained.name))
        placed.add(run.name)
        ordered.append(run)

    for run in runs:
        place(run)
    return ordered


def expand_study(
    study: StudySpec,
    datasets: dict[str, DatasetSpec],
    backbones: dict[str, BackboneSpec],
    methods: dict[str, MethodSpec],
) -> list[RunSpec]:
    """The study's runs, ordered dataset, N_train, seed, backbone, method (a table fills up seed by seed)."""
    runs = []
    for dataset, train_size, seed, backbone, method in itertools.product(
        study.datasets, study.train_sizes, study.seeds, study.backbones, study.methods
    ):
        data, model, how = datasets[dataset], backbones[backbone], methods[method]
        if isinstance(data.test_size, dict) and not isinstance(data.test_size.get(train_size), int):
            raise GridError(
                f"datasets.{dataset}.test_size = {data.test_size!r} has no integer entry for N_train {train_size} "
                f"(study {study.name})"
            )
        source = None
        if how.wall_clock_from is not None:
            if how.wall_clock_from not in study.methods:
                raise GridError(
                    f"methods.{method}.wall_clock_from = {how.wall_clock_from!r} is not a method of study {study.name}"
                )
            source = _run(study, data, model, methods[how.wall_clock_from], train_size, seed)
        runs.append(_run(study, data, model, how, train_size, seed, source))
    return runs


def _run(
    study: StudySpec,
    data: DatasetSpec,
    model: BackboneSpec,
    how: MethodSpec,
    train_size: int,
    seed: int,
    wall_clock_source: RunSpec | None = None,
) -> RunSpec:
    """One run of ``study``; its step cap is the method's if it sets one, else the study's."""
    overrides = merge(merge(merge(data.overrides, model.overrides), how.overrides), study.overrides)
    name = f"{data.name}-{model.name}-{how.name}-n{train_size}-s{seed}" + (f"-{study.tag}" if study.tag else "")
    max_steps = study.max_steps[train_size]
    if how.max_steps is not None:
        max_steps = _max_steps(how.max_steps, (train_size,), f"methods.{how.name}")[train_size]
    return RunSpec(
        name=name,
        dataset=data,
        backbone=model,
        method=how,
        train_size=train_size,
        seed=seed,
        max_steps=max_steps,
        tag=study.tag,
        overrides=overrides,
        wall_clock_source=wall_clock_source,
    )


def load_grid(path: Path) -> Grid:
    """Read and expand a grid file."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise GridError(f"{path}: not valid YAML ({getattr(error, 'problem', None) or error}{where})") from None
    if not isinstance(content, dict):
        raise GridError(f"{path}: a grid must be a mapping (name:, datasets:, backbones:, methods:, ...)")
    return parse_grid(content, name=path.stem)
