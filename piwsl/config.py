"""The ``piwsl`` configuration section: one frozen dataclass that rejects unknown keys and bad values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

Method = Literal["piwsl", "baseline", "noisynode", "weak_label"]
Direction = Literal["random", "adversarial"]
ForwardMode = Literal["auto", "batched", "sequential"]
ConsistencyForm = Literal["taylor", "trapezoid"]

#: Equilibrium C-H bond length (Å); a displacement beyond 30% of it leaves the Taylor regime (Sec. 4.4).
CH_BOND_LENGTH = 1.09
MAX_ALLOWED_DISPLACEMENT = 0.3 * CH_BOND_LENGTH

#: The paper's hyper-parameter cases (App. B, Table 9): (C_PITC, C_PISC, max displacement in Å).
PRESETS: dict[str, tuple[float, float, float]] = {
    "A": (1.2, 0.8, 0.05),
    "B": (1.0, 0.0, 0.02),
    "C": (0.1, 0.01, 0.02),
    "D": (1.2, 0.01, 0.05),
    "E": (1.2, 0.01, 0.02),
    "F": (1.2, 0.01, 0.03),
    "G": (0.01, 0.001, 0.05),
}


#: The form of the consistency terms when neither a preset nor the weak-label method implies one:
#: trapezoid, which beat the Taylor form and the baseline in energy at equal force error in every
#: run of the consistency-form study (README "Which consistency form").
DEFAULT_CONSISTENCY_FORM = "trapezoid"


class PIWSLConfigError(ValueError):
    """A bad key or value in the ``piwsl`` config section."""


@dataclass(frozen=True)
class PIWSLConfig:
    """Settings of the physics-informed weak supervision, all optional (defaults: the paper's Case D).

    Attributes:
        method: ``piwsl`` (PITC + PISC), ``baseline`` (supervised only), ``noisynode`` (train on
            displaced structures against the original labels) or ``weak_label`` (Cooper et al.).
        preset: one of the paper's cases ``A``-``G``; sets ``c_pitc``, ``c_pisc`` and
            ``max_displacement`` unless they are given explicitly.
        c_pitc: weight of the PITC loss (Eq. 5), dimensionless.
        c_pisc: weight of the PISC loss (Eq. 5), dimensionless.
        c_weak_label: weight of the weak-label loss (method ``weak_label``).
        max_displacement: upper bound ``dr_max`` of the displacement magnitude ``dr0``, Å.
        direction: ``random`` or ``adversarial`` (Eq. 10) displacement directions.
        displacement_form: ``gaussian`` (App. B) or ``normalized`` (Eq. 6); see ``piwsl.displacements``.
        atom_fraction: probability that an atom is displaced (App. I), in (0, 1].
        pointwise_loss: ``mse`` (default), ``mae`` or ``relu`` (Eq. 17). The ReLU margin
            ``|E(S + dr)| ||dr||^2`` takes the energy relative to the energy normalizer's mean (and
            element references): with total energies it would switch the term off everywhere.
        pisc_variant: ``eq4`` (default), ``eq15`` or ``eq16`` (App. E).
        consistency_form: how PITC and PISC estimate the energy at the end of a step ``d``:
            ``taylor`` (the paper's ``E(A) - sum <d, F(A)>``, error O(|d|^2)) or ``trapezoid``
            (``E(A) - 1/2 sum <d, F(A) + F(A + d)>``, error O(|d|^3)); see ``piwsl.losses``. A
            ``preset`` and method ``weak_label`` imply ``taylor`` unless it is given.
        detach_target: stop the gradient through the Taylor side of each term (ablation).
        warmup_steps: optimizer steps of supervised-only training before the extra terms start.
        forward_mode: ``batched`` (S, S+dr, S+dr' through the model as one batch), ``sequential``
            (one model call per geometry) or ``auto``: batched, except on a CPU with one torch thread,
            where the stacked batch was measured no faster (``scripts/benchmark_step.py``).
        consistency_fraction: fraction of each batch's structures that get the extra terms, in (0, 1]
            (at least one structure; a random subset each step).
        consistency_every: apply the extra terms on every k-th optimizer step only (k >= 1).
        min_distance: redraw a displacement that brings two atoms of a structure closer than this, Å
            (0 disables the check).
        max_nonfinite_steps: stop training after this many consecutive steps whose displaced
            geometries gave non-finite energies or forces (their terms are dropped until then), or
            whose loss or gradients were non-finite (those steps are skipped, ``piwsl.step_guard``).
        seed: seed of the displacement generator; ``None`` uses the run's seed.
    """

    method: Method = "piwsl"
    preset: str | None = None
    c_pitc: float = 1.2
    c_pisc: float = 0.01
    c_weak_label: float = 1.0
    max_displacement: float = 0.05
    direction: Direction = "random"
    displacement_form: Literal["gaussian", "normalized"] = "gaussian"
    atom_fraction: float = 1.0
    pointwise_loss: Literal["mse", "mae", "relu"] = "mse"
    pisc_variant: Literal["eq4", "eq15", "eq16"] = "eq4"
    consistency_form: ConsistencyForm = DEFAULT_CONSISTENCY_FORM
    detach_target: bool = False
    warmup_steps: int = 0
    forward_mode: ForwardMode = "auto"
    consistency_fraction: float = 1.0
    consistency_every: int = 1
    min_distance: float = 0.5
    max_nonfinite_steps: int = 50
    seed: int | None = None

    @classmethod
    def from_dict(cls, section: dict[str, Any] | None, where: str = "piwsl") -> PIWSLConfig:
        """Build from a YAML section; unknown keys and invalid values raise ``PIWSLConfigError``."""
        section = dict(section or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise PIWSLConfigError(
                f"unknown key(s) in the '{where}' config section: {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(known))}"
            )
        preset = section.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise PIWSLConfigError(f"{where}.preset = {preset!r} is not one of the paper's cases {sorted(PRESETS)}")
            c_pitc, c_pisc, max_displacement = PRESETS[preset]
            section.setdefault("c_pitc", c_pitc)
            section.setdefault("c_pisc", c_pisc)
            section.setdefault("max_displacement", max_displacement)
            section.setdefault("consistency_form", "taylor")  # the paper's cases are Taylor-form results
        if section.get("method") == "weak_label":
            section.setdefault("consistency_form", "taylor")
        config = cls(**section)
        config.validate(where)
        return config

    def validate(self, where: str = "piwsl") -> None:
        """Raise ``PIWSLConfigError`` naming the key, the value and what is allowed."""
        for name, choices in _LITERAL_CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise PIWSLConfigError(f"{where}.{name} = {value!r}; allowed: {', '.join(choices)}")
        for name in ("c_pitc", "c_pisc", "c_weak_label"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise PIWSLConfigError(f"{where}.{name} = {value!r}; allowed: a number >= 0")
        if not isinstance(self.max_displacement, (int, float)) or not (
            0 < self.max_displacement <= MAX_ALLOWED_DISPLACEMENT
        ):
            raise PIWSLConfigError(
                f"{where}.max_displacement = {self.max_displacement!r} Å; allowed: 0 < value <= "
                f"{MAX_ALLOWED_DISPLACEMENT:.3f} Å (30% of a C-H bond, the limit of the Taylor expansion)"
            )
        if not isinstance(self.atom_fraction, (int, float)) or not 0 < self.atom_fraction <= 1:
            raise PIWSLConfigError(f"{where}.atom_fraction = {self.atom_fraction!r}; allowed: 0 < value <= 1")
        if not isinstance(self.consistency_fraction, (int, float)) or not 0 < self.consistency_fraction <= 1:
            raise PIWSLConfigError(
                f"{where}.consistency_fraction = {self.consistency_fraction!r}; allowed: 0 < value <= 1"
            )
        if not isinstance(self.consistency_every, int) or self.consistency_every < 1:
            raise PIWSLConfigError(f"{where}.consistency_every = {self.consistency_every!r}; allowed: an integer >= 1")
        if not isinstance(self.min_distance, (int, float)) or self.min_distance < 0:
            raise PIWSLConfigError(f"{where}.min_distance = {self.min_distance!r} Å; allowed: a number >= 0")
        if not isinstance(self.max_nonfinite_steps, int) or self.max_nonfinite_steps < 1:
            raise PIWSLConfigError(
                f"{where}.max_nonfinite_steps = {self.max_nonfinite_steps!r}; allowed: an integer >= 1"
            )
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise PIWSLConfigError(f"{where}.warmup_steps = {self.warmup_steps!r}; allowed: an integer >= 0")
        if self.seed is not None and not isinstance(self.seed, int):
            raise PIWSLConfigError(f"{where}.seed = {self.seed!r}; allowed: an integer or null")
        if not isinstance(self.detach_target, bool):
            raise PIWSLConfigError(f"{where}.detach_target = {self.detach_target!r}; allowed: true or false")
        if self.method == "weak_label" and self.consistency_form != "taylor":
            raise PIWSLConfigError(
                f"{where}.consistency_form = {self.consistency_form!r} with method 'weak_label': the weak label is "
                "built from reference labels at S only, so it exists in the 'taylor' form only (the trapezoid "
                "form needs reference forces at S + dr, which no data set has)"
            )
        if self.method == "piwsl" and self.c_pitc == 0 and self.c_pisc == 0:
            raise PIWSLConfigError(
                f"{where}: method 'piwsl' with c_pitc = c_pisc = 0 adds nothing; use method 'baseline'"
            )

    @property
    def needs_displacements(self) -> bool:
        return self.method != "baseline"


_LITERAL_CHOICES: dict[str, tuple[str, ...]] = {
    "method": get_args(Method),
    "direction": get_args(Direction),
    "displacement_form": ("gaussian", "normalized"),
    "pointwise_loss": ("mse", "mae", "relu"),
    "pisc_variant": ("eq4", "eq15", "eq16"),
    "consistency_form": get_args(ConsistencyForm),
    "forward_mode": get_args(ForwardMode),
}
