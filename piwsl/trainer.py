"""``PIWSLTrainer``: fairchem's ``OCPTrainer`` plus physics-informed weak supervision.

The trainer only decides *which geometries* go through the model and *which terms* enter the
loss; the physics lives in ``piwsl.losses`` and ``piwsl.displacements``. It overrides three
hooks of ``OCPTrainer`` and keeps ``train()``, ``validate()`` and ``predict()`` as they are:

- ``_forward``: in training, also evaluates the model at ``S + dr`` (and ``S + dr'``), either as
  one stacked batch (``forward_mode: batched``) or one call per geometry (``sequential``);
- ``_compute_loss``: adds ``C_PITC * L_PITC + C_PISC * L_PISC`` (or the weak-label term) to
  fairchem's supervised loss and logs every term separately;
- ``_compute_metrics``: skips targets the batch has no labels for (energy-only training).

Settings come from the ``piwsl`` section of the config (``optim.piwsl`` for fairchem's own CLI,
top-level ``piwsl`` for ``main.py``), see ``piwsl.config.PIWSLConfig``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from fairchem.core.common import distutils
from fairchem.core.common.registry import registry
from fairchem.core.modules.evaluator import Evaluator
from fairchem.core.modules.normalization.normalizer import Normalizer
from fairchem.core.trainers import OCPTrainer
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Batch

import piwsl.models  # noqa: F401  (registers piwsl's backbones, also under fairchem's own CLI)
from piwsl.batching import select_structures, stack_geometries
from piwsl.checkpointing import ResumableTraining
from piwsl.config import PIWSLConfig, PIWSLConfigError
from piwsl.convergence import ConvergenceTraining, cosine_schedule_defaults
from piwsl.displacements import (
    AdversarialDisplacementSampler,
    DisplacementSampler,
    RandomDisplacementSampler,
    close_contacts,
)
from piwsl.finetune import OPTIM_KEY as FINETUNE_KEY
from piwsl.finetune import FinetuneConfig, start_from_checkpoint
from piwsl.losses import PISCLoss, PITCLoss, WeakLabelLoss
from piwsl.neighbours import warn_if_truncated
from piwsl.progress import TrainingProgress
from piwsl.setup_checks import check_graph_backend, reject_ignored_section
from piwsl.step_guard import FiniteStepGuard, TrainingDiverged
from piwsl.training_data import TRAINING_DATA_KEY, describe_training_data

ENERGY_KEY = "energy"
#: How checkpoints name this trainer: fairchem's registry (and its OCPCalculator) resolve the dotted path.
TRAINER_PATH = "piwsl.trainer.PIWSLTrainer"
#: The trainer's name in fairchem's start-up config dump, its evaluator task and predictions file names.
TRAINER_NAME = "piwsl"
#: Attempts to redraw a displacement that brings two atoms too close, before giving up on it.
MAX_REDRAWS = 10
FORCES_KEY = "forces"


@dataclass
class Geometry:
    """Model predictions at one geometry, in physical units: energies (B,), forces (N, 3)."""

    energy: Tensor
    forces: Tensor


@dataclass
class DisplacedPredictions:
    """What the consistency terms need beyond the original geometry's outputs.

    ``subset`` lists the structures that got displaced copies (``None``: all of them) and
    ``target`` is the batch of those structures, in whose atom order displacements are stored.
    """

    subset: Tensor | None
    target: Batch
    displacement: Tensor
    displaced: Geometry
    displacement_prime: Tensor | None = None
    displaced_prime: Geometry | None = None


def register_evaluator_task(name: str) -> None:
    """Give fairchem's Evaluator the defaults of its generic ``ocp`` task under ``name``.

    fairchem looks up a trainer's default metrics and primary metric by the trainer's name; without
    these entries any name but its task names fails there.
    """
    Evaluator.task_metrics.setdefault(name, Evaluator.task_metrics.get("ocp", {}))
    Evaluator.task_primary_metric.setdefault(name, Evaluator.task_primary_metric.get("ocp"))


@registry.register_trainer("piwsl")
class PIWSLTrainer(FiniteStepGuard, ConvergenceTraining, ResumableTraining, OCPTrainer):
    """OCP trainer with PITC/PISC consistency losses, NoisyNode and weak-label baselines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        reject_ignored_section()
        check_graph_backend(kwargs.get("model", {}))
        optimizer = kwargs.get("optimizer", {})
        self.piwsl_config = PIWSLConfig.from_dict(optimizer.get("piwsl"), where="piwsl")
        cosine_schedule_defaults(optimizer)
        self._pending: DisplacedPredictions | None = None
        self._progress: TrainingProgress | None = None
        register_evaluator_task(TRAINER_NAME)
        super().__init__(*args, **(kwargs | {"name": TRAINER_NAME}))  # fairchem passes its task name "ocp"
        self.config["trainer"] = TRAINER_PATH
        self.metrics: dict = {}
        self._nonfinite_steps = 0
        self._consecutive_nonfinite_steps = 0
        self._check_outputs()
        self._tie_force_normalizer()
        self._check_labels()
        if self.piwsl_config.needs_displacements and distutils.is_master():
            warn_if_truncated(getattr(self, "train_dataset", None) or [], self._unwrapped_model)
        self._apply_max_steps()
        self._build_samplers()
        self._setup_checkpoints()
        self._setup_convergence()
        self._setup_step_guard(self.piwsl_config.max_nonfinite_steps)
        self._record_training_data()
        finetune = optimizer.get(FINETUNE_KEY)
        if finetune is not None and getattr(self, "train_dataset", None) is not None:  # not for inference-only
            start_from_checkpoint(self, FinetuneConfig.from_dict(finetune))
        common = {
            "loss": self.piwsl_config.pointwise_loss,
            "energy_scale": self.energy_scale,
            "detach_target": self.piwsl_config.detach_target,
        }
        form = self.piwsl_config.consistency_form
        self.pitc_loss = PITCLoss(**common, form=form)
        self.pisc_loss = PISCLoss(**common, variant=self.piwsl_config.pisc_variant, form=form)
        self.weak_label_loss = WeakLabelLoss(**common)
        if distutils.is_master():
            logging.info(f"PIWSL settings: {self.piwsl_config}")

    def _record_training_data(self) -> None:
        """Units, element references, elements and structure hashes of the training set, for every checkpoint."""
        dataset = getattr(self, "train_dataset", None)
        if dataset is not None and len(dataset) > 0:
            records = (dataset[index] for index in range(len(dataset)))
            self.config[TRAINING_DATA_KEY] = describe_training_data(self.config["dataset"], records)

    def _build_samplers(self) -> None:
        seed = self.piwsl_config.seed
        if seed is None:
            seed = int(self.config["cmd"].get("seed") or 0)
        # Different ranks must draw different displacements for their different structures.
        seed += 7919 * distutils.get_rank()
        settings = {
            "max_displacement": self.piwsl_config.max_displacement,
            "form": self.piwsl_config.displacement_form,
            "atom_fraction": self.piwsl_config.atom_fraction,
        }
        self.random_sampler = RandomDisplacementSampler(**settings, seed=seed)
        self.adversarial_sampler = (
            AdversarialDisplacementSampler(**settings, seed=seed + 1)
            if self.piwsl_config.direction == "adversarial"
            else None
        )

    # ------------------------------------------------------------------ set-up
    def _check_outputs(self) -> None:
        missing = [key for key in (ENERGY_KEY, FORCES_KEY) if key not in self.output_targets]
        if missing and self.piwsl_config.needs_displacements:
            raise ValueError(f"the piwsl trainer needs model outputs named {missing} in the config's 'outputs' section")
        if self.piwsl_config.needs_displacements and not self.config["model"].get("otf_graph", False):
            raise ValueError("displaced structures need neighbour lists rebuilt on the fly: set model.otf_graph: True")

    @property
    def gradient_forces(self) -> bool:
        """Whether the model's forces are ``-dE/dr`` of its energy (no separate force head)."""
        model = self._unwrapped_model
        if hasattr(model, "gradient_forces"):  # piwsl's backbones say so themselves
            return bool(model.gradient_forces)
        return bool(getattr(model, "regress_forces", False)) and not getattr(model, "direct_forces", False)

    def _tie_force_normalizer(self) -> None:
        """For gradient forces, denormalize forces with the energy's scale, so that ``F = -dE/dr`` holds.

        The model differentiates its normalized energy; forces in physical units are then that
        gradient times the energy's standard deviation. A separately fitted force normalizer (as a
        config for direct forces would have) would break the identity the consistency terms rely on.
        """
        energy = self.normalizers.get(ENERGY_KEY)
        if not self.gradient_forces or energy is None:
            return
        forces = self.normalizers.get(FORCES_KEY)
        if forces is None or not torch.allclose(forces.rmsd, energy.rmsd) or float(forces.mean) != 0:
            logging.info(f"gradient forces: force normalizer set to mean 0, rmsd {float(energy.rmsd):.4g} (energy's)")
            self.normalizers[FORCES_KEY] = Normalizer(mean=0.0, rmsd=float(energy.rmsd)).to(self.device)

    def load_model(self) -> None:
        """fairchem's model; under DDP, tolerate parameters a step leaves unused (an idle force head)."""
        super().load_model()
        forces_supervised = any(
            FORCES_KEY in item and item[FORCES_KEY].get("coefficient", 1) != 0
            for item in self.config.get("loss_functions", [])
        )
        if isinstance(self.model, DistributedDataParallel) and not forces_supervised:
            self.model = DistributedDataParallel(self._unwrapped_model, find_unused_parameters=True)

    def _check_labels(self) -> None:
        """Fail before training when the training set lacks labels that the loss or method needs."""
        dataset = getattr(self, "train_dataset", None)
        if dataset is None or len(dataset) == 0:
            return
        labels = set(dataset[0].keys())
        source = self.config["dataset"].get("src")
        for target, info in self.loss_functions:
            if target not in labels:
                raise PIWSLConfigError(
                    f"loss_functions.{target}.coefficient = {info.get('coefficient', 1)} but the training set "
                    f"{source} has no '{target}' labels; set the coefficient to 0 (e.g. energy-only training)"
                )
        config = self.piwsl_config
        if config.method == "weak_label" and FORCES_KEY not in labels:
            raise PIWSLConfigError(f"piwsl.method = 'weak_label' needs force labels, which {source} lacks")
        if config.direction == "adversarial":
            if config.method in ("baseline", "noisynode"):
                raise PIWSLConfigError(
                    f"piwsl.direction = 'adversarial' with method {config.method!r}: adversarial displacements "
                    "apply to methods 'piwsl' and 'weak_label'"
                )
            if ENERGY_KEY not in labels:
                raise PIWSLConfigError(f"piwsl.direction = 'adversarial' needs energy labels, which {source} lacks")
            if not self.config["model"].get("regress_forces", True):
                raise PIWSLConfigError(
                    "piwsl.direction = 'adversarial' needs forces or position gradients: set model.regress_forces"
                )

    def displacement_samplers(self) -> dict[str, DisplacementSampler]:
        samplers = {"random": self.random_sampler}
        if self.adversarial_sampler is not None:
            samplers["adversarial"] = self.adversarial_sampler
        return samplers

    def _apply_max_steps(self) -> None:
        """``optim.max_steps`` (fairchem counts epochs only): enough epochs, cut at the step (``ResumableTraining``)."""
        max_steps = self.config["optim"].get("max_steps")
        if max_steps is None or getattr(self, "train_loader", None) is None:
            return
        self.config["optim"]["max_epochs"] = math.ceil(int(max_steps) / len(self.train_loader))

    def train(self, disable_eval_tqdm: bool = False) -> None:
        """fairchem's training loop with a progress bar (ETA, loss terms) on the main rank."""
        optim = self.config["optim"]
        total = int(optim.get("max_steps") or optim["max_epochs"] * len(self.train_loader))
        self._progress = TrainingProgress(total, self.step, enabled=distutils.is_master())
        try:
            super().train(disable_eval_tqdm)
        finally:
            self._progress.close()
            self._progress = None

    def _backward(self, loss: Tensor) -> None:
        super()._backward(loss)
        if self._progress is not None:
            self._progress.update(self.step, self.metrics)

    def load_loss(self) -> None:
        """fairchem's losses, without terms whose coefficient is 0 (e.g. forces in energy-only training)."""
        super().load_loss()
        self.loss_functions = [
            (target, info) for target, info in self.loss_functions if info.get("coefficient", 1) != 0
        ]

    @property
    def energy_scale(self) -> float:
        """Standard deviation (physical units) that makes consistency residuals dimensionless."""
        normalizer = self.normalizers.get(ENERGY_KEY)
        return float(normalizer.rmsd) if normalizer is not None else 1.0

    # ------------------------------------------------------------------ forward
    def _consistency_active(self) -> bool:
        config = self.piwsl_config
        return (
            config.needs_displacements
            and self.model.training
            and torch.is_grad_enabled()
            and self.step > config.warmup_steps
            and self.step % config.consistency_every == 0
        )

    def _forward(self, batch: Batch) -> dict[str, Tensor]:
        self._pending = None
        if self.model.training and torch.is_grad_enabled():
            self._at_step_boundary()
        if not self._consistency_active():
            return super()._forward(batch)
        # Random displacements and their close-contact check are made where the loader left the batch
        # (the host), before it moves to the device: no device-to-host syncs for them on a GPU.
        if self.piwsl_config.method == "noisynode":
            displacement = self._sample_random(batch)
            return super()._forward(stack_geometries([(batch.to(self.device), displacement.to(self.device))]))
        subset = self._choose_structures(batch)
        target = batch if subset is None else select_structures(batch, subset)
        adversarial = self.piwsl_config.direction == "adversarial"
        random_displacement = None if adversarial else self._sample_random(target)
        prime = self._sample_random(target) if self._needs_prime else None
        batch, target = batch.to(self.device), target.to(self.device)
        subset = None if subset is None else subset.to(self.device)
        if adversarial:
            out, displacement = self._forward_adversarial(batch, subset, target)
            parts = [(target, displacement)]
        else:
            displacement = random_displacement.to(self.device)
            parts = [(batch, None), (target, displacement)]
        if prime is not None:
            prime = prime.to(self.device)
            parts.append((target, prime))
        outputs = self._forward_geometries(parts)
        if parts[0][1] is None:
            out = outputs.pop(0)
        displaced = self._relative(target, outputs[0])
        displaced_prime = self._relative(target, outputs[1]) if prime is not None else None
        self._pending = DisplacedPredictions(subset, target, displacement, displaced, prime, displaced_prime)
        return out

    @property
    def batched_forward(self) -> bool:
        """Whether all geometries of a step go through the model as one stacked batch.

        ``auto`` stacks except on a CPU with a single torch thread, where one call per geometry was
        as fast or faster (README "Performance"): the stacked batch's 3x larger tensors miss caches
        and gain nothing from the fewer, larger operators without a second thread to share them.
        """
        mode = self.piwsl_config.forward_mode
        if mode == "auto":
            return self.device.type != "cpu" or torch.get_num_threads() > 1
        return mode == "batched"

    @property
    def _needs_prime(self) -> bool:
        return self.piwsl_config.method == "piwsl" and self.piwsl_config.c_pisc > 0

    def _choose_structures(self, batch: Batch) -> Tensor | None:
        """Sorted indices of the structures that get consistency terms, or ``None`` for all."""
        fraction = self.piwsl_config.consistency_fraction
        num_structures = int(batch.natoms.numel())
        count = max(1, round(fraction * num_structures))
        if count >= num_structures:
            return None
        order = torch.randperm(num_structures, generator=self.random_sampler.generator)
        return order[:count].sort().values.to(batch.batch.device)

    def _forward_adversarial(
        self, batch: Batch, subset: Tensor | None, target: Batch
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Outputs at ``S`` and adversarial displacements (Eq. 10) of the ``target`` structures."""
        labels_have_forces = FORCES_KEY in batch.keys()
        if not labels_have_forces:
            batch.pos.requires_grad_(True)
        out = super()._forward(batch)
        direction = self._adversarial_direction(batch, out, labels_have_forces)
        if subset is not None:
            direction = direction[torch.isin(batch.batch, subset)]
        displacement = self.adversarial_sampler.sample(
            direction, target.batch, int(target.natoms.numel()), getattr(target, "fixed", None)
        )
        return out, displacement

    def _adversarial_direction(self, batch: Batch, out: dict[str, Tensor], labels_have_forces: bool) -> Tensor:
        """Gradient of ``|E - E_ref|`` with respect to positions (Eq. 10), detached."""
        prediction = self._physical(batch, out)
        sign = torch.sign(prediction.energy - batch[ENERGY_KEY].view(-1)).detach()
        if labels_have_forces:
            difference = prediction.forces - batch[FORCES_KEY].view(-1, 3)
            return (-sign[batch.batch].unsqueeze(-1) * difference).detach()
        error = (sign * prediction.energy).sum()
        (gradient,) = torch.autograd.grad(error, batch.pos, retain_graph=True)
        return gradient.detach()

    def _forward_geometries(self, parts: list[tuple[Batch, Tensor | None]]) -> list[dict[str, Tensor]]:
        """Model outputs (normalized, as fairchem's ``_forward`` returns them) at each geometry."""
        if not self.batched_forward:
            return [super(PIWSLTrainer, self)._forward(stack_geometries([part])) for part in parts]
        stacked = super()._forward(stack_geometries(parts))
        sizes = {
            "system": [int(part.natoms.numel()) for part, _ in parts],
            "atom": [int(part.pos.shape[0]) for part, _ in parts],
        }
        pieces = {key: value.split(sizes[self.output_targets[key]["level"]]) for key, value in stacked.items()}
        return [{key: pieces[key][k] for key in pieces} for k in range(len(parts))]

    def _sample_random(self, batch: Batch) -> Tensor:
        """Random displacements, redrawn for structures where two atoms come closer than ``min_distance``."""
        num_structures = int(batch.natoms.numel())
        fixed = getattr(batch, "fixed", None)
        displacement = self.random_sampler.sample(batch.batch, num_structures, fixed, batch.pos.dtype)
        min_distance = self.piwsl_config.min_distance
        if min_distance <= 0:
            return displacement
        for _ in range(MAX_REDRAWS):
            bad = close_contacts(
                batch.pos, displacement, batch.batch, batch.natoms, batch.cell, batch.pbc, min_distance
            )
            if not bad.any():
                return displacement
            redraw = self.random_sampler.sample(batch.batch, num_structures, fixed, batch.pos.dtype)
            displacement = torch.where(bad[batch.batch].unsqueeze(-1), redraw, displacement)
        bad = close_contacts(batch.pos, displacement, batch.batch, batch.natoms, batch.cell, batch.pbc, min_distance)
        if bad.any():
            logging.warning(
                f"{int(bad.sum())} structure(s) kept atoms closer than {min_distance} Å after {MAX_REDRAWS} "
                "redraws; they are not displaced this step"
            )
            displacement = displacement * (~bad[batch.batch]).unsqueeze(-1)
        return displacement

    def _physical(self, batch: Batch, out: dict[str, Tensor]) -> Geometry:
        """Denormalized energies (B,) and forces (N, 3) of one geometry."""
        energy = self._denorm_preds(ENERGY_KEY, out[ENERGY_KEY], batch).view(-1)
        forces = self._denorm_preds(FORCES_KEY, out[FORCES_KEY], batch).view(-1, 3)
        return Geometry(energy=energy, forces=forces)

    def _relative(self, batch: Batch, out: dict[str, Tensor]) -> Geometry:
        """Energies (B,) relative to each structure's offset (normalizer mean, element references), forces (N, 3).

        Physical units, but without the offset that the consistency residuals cancel anyway: in float32
        a total energy of -406,000 kcal/mol resolves only 1/32 kcal/mol, its deviation from the mean far finer.
        """
        forces = self._denorm_preds(FORCES_KEY, out[FORCES_KEY], batch).view(-1, 3)
        return Geometry(energy=out[ENERGY_KEY].view(-1) * self.energy_scale, forces=forces)

    def _relative_labels(self, batch: Batch) -> Tensor:
        """Reference energies (B,) minus the same offsets as ``_relative``, differenced in float64."""
        zeros = batch[ENERGY_KEY].new_zeros(int(batch.natoms.numel()), 1)  # fairchem's references need (B, 1)
        offset = self._denorm_preds(ENERGY_KEY, zeros, batch)
        return (batch[ENERGY_KEY].view(-1).double() - offset.view(-1).double()).to(batch[ENERGY_KEY].dtype)

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, out: dict[str, Tensor], batch: Batch) -> Tensor:
        supervised = super()._compute_loss(out, batch)
        pending, self._pending = self._pending, None
        if pending is None:
            return supervised
        terms = self._consistency_terms(out, batch, pending)
        logged = {"supervised_loss": supervised} | {f"{name}_loss": value for name, (_, value) in terms.items()}
        outputs = [pending.displaced.energy, pending.displaced.forces]
        if pending.displaced_prime is not None:
            outputs += [pending.displaced_prime.energy, pending.displaced_prime.forces]
        # One device-to-host copy for the finiteness check and the logged values (a sync on GPUs).
        checked = [supervised] + outputs + [value for _, value in terms.values()]
        finite = torch.stack([torch.isfinite(t).all() for t in checked])
        values = torch.stack([value.detach().to(finite.device, torch.float64) for value in logged.values()])
        host = torch.cat([finite.to(torch.float64), values]).tolist()
        if not host[0]:
            return supervised  # not a displacement problem: the step guard skips the whole step
        if not all(host[: len(finite)]):
            return self._drop_consistency_terms(batch, supervised)
        self._consecutive_nonfinite_steps = 0
        total = supervised
        for weight, value in terms.values():
            total = total + weight * value
        for name, value in zip(logged, host[len(finite) :], strict=True):
            self.metrics = self.evaluator.update(name, value, self.metrics)
        return total

    def _drop_consistency_terms(self, batch: Batch, supervised: Tensor) -> Tensor:
        """The supervised loss alone, from a forward that never saw the non-finite displaced geometries."""
        self._nonfinite_steps += 1
        self._consecutive_nonfinite_steps += 1
        limit = self.piwsl_config.max_nonfinite_steps
        logging.warning(
            f"step {self.step}: non-finite energy or force at a displaced geometry; consistency terms dropped "
            f"({self._nonfinite_steps} step(s) so far, {self._consecutive_nonfinite_steps} in a row)"
        )
        if self._consecutive_nonfinite_steps >= limit:
            raise TrainingDiverged(
                f"non-finite predictions at displaced geometries in {limit} consecutive steps (piwsl."
                "max_nonfinite_steps); lower piwsl.max_displacement, or optim.lr_initial (now "
                f"{self.config['optim'].get('lr_initial')}) if training diverged, or check the model's stability"
            )
        self.metrics = self.evaluator.update("nonfinite_steps", float(self._nonfinite_steps), self.metrics)
        if not self.batched_forward:
            return supervised  # its graph never touched the displaced copies
        # In the stacked batch, NaN activations of the displaced copies would poison weight gradients
        # (0 * NaN) even though the supervised loss does not use them: redo the forward without them.
        return super()._compute_loss(super()._forward(batch), batch)

    def _consistency_terms(
        self, out: dict[str, Tensor], batch: Batch, pending: DisplacedPredictions
    ) -> dict[str, tuple[float, Tensor]]:
        """Weighted, batch-reduced consistency terms: name -> (weight, value)."""
        config = self.piwsl_config
        target = pending.target
        index = target.batch
        if config.method == "weak_label":
            per_structure = self.weak_label_loss(
                pending.displaced.energy,
                self._relative_labels(target),
                target[FORCES_KEY].view(-1, 3),
                pending.displacement,
                index,
            )
            return {"weak_label": (config.c_weak_label, self._reduce(per_structure))}
        original = self._relative(batch, out)
        if pending.subset is not None:
            atoms = torch.isin(batch.batch, pending.subset)
            original = Geometry(energy=original.energy[pending.subset], forces=original.forces[atoms])
        terms: dict[str, tuple[float, Tensor]] = {}
        if config.c_pitc > 0:
            pitc = self.pitc_loss(
                original.energy,
                original.forces,
                pending.displaced.energy,
                pending.displacement,
                index,
                forces_displaced=pending.displaced.forces,
            )
            terms["pitc"] = (config.c_pitc, self._reduce(pitc))
        if config.c_pisc > 0 and pending.displaced_prime is not None:
            pisc = self.pisc_loss(
                original.energy,
                original.forces,
                pending.displaced.energy,
                pending.displaced.forces,
                pending.displaced_prime.energy,
                pending.displaced_prime.forces,
                pending.displacement,
                pending.displacement_prime,
                index,
            )
            terms["pisc"] = (config.c_pisc, self._reduce(pisc))
        return terms

    def _reduce(self, per_structure: Tensor) -> Tensor:
        """Mean over the structures of all ranks, scaled for DDP's gradient averaging."""
        count = torch.tensor(float(per_structure.numel()), device=per_structure.device)
        world_size = distutils.get_world_size()
        if world_size > 1:
            count = distutils.all_reduce(count, device=per_structure.device)
        return per_structure.sum() * world_size / count.clamp_min(1.0)

    # ------------------------------------------------------------------ metrics
    def _compute_metrics(
        self, out: dict[str, Tensor], batch: Batch, evaluator: Evaluator, metrics: dict | None = None
    ) -> dict:
        """fairchem's metrics, over the targets this batch has labels for (energy-only sets lack forces).

        Same values as ``OCPTrainer._compute_metrics`` (per-atom targets on free atoms only, ``natoms``
        counting free atoms), but the free-atom counts come from one scatter instead of a Python loop
        with a host sync per structure, and predictions are detached (metrics need no autograd graph).
        """
        labelled = {name: info for name, info in self.output_targets.items() if name in batch.keys()}
        if len(labelled) < len(self.output_targets):
            evaluator = Evaluator(
                task=self.name,
                eval_metrics={k: v for k, v in evaluator.target_metrics.items() if k in labelled},
            )
        fixed = getattr(batch, "fixed", None)
        free = torch.ones_like(batch.batch, dtype=torch.bool) if fixed is None else fixed == 0
        free_atoms = torch.zeros_like(batch.natoms).index_add_(0, batch.batch, free.to(batch.natoms.dtype))
        predictions: dict[str, Tensor] = {}
        targets: dict[str, Tensor] = {}
        for name, info in labelled.items():
            prediction, target = out[name].detach(), batch[name]
            if info["level"] == "atom":
                if info.get("eval_on_free_atoms", True):
                    prediction, target = prediction[free], target[free]
                target = target.reshape(prediction.shape[0], -1)
            else:
                target = target.reshape(int(batch.natoms.numel()), -1)
            predictions[name] = self._denorm_preds(name, prediction, batch)
            targets[name] = target
        predictions["natoms"] = targets["natoms"] = free_atoms
        for key in batch.keys():
            if key not in self.output_targets and key != "natoms" and isinstance(batch[key], Tensor):
                predictions[key] = targets[key] = batch[key].to(self.device)
        return evaluator.eval(predictions, targets, prev_metrics=metrics)
