"""Grouped settings of a fit: how a volume is prepared (:class:`Preparation`) and how the errors are
made (:class:`Errors`). With :class:`~xtds.observables.tds.settings.TDSModel` (the forward model)
and an :class:`~xtds.fitting.optimizers.Optimizer` they are all a fit takes besides the crystal,
its range, the start and the temperature:

    ds.tds.fit(ni, shells=5, initial=start,
               prepare=Preparation(bragg=0.1, q_max=8.0),
               model=TDSModel(method="one_phonon"),
               errors=Errors(temperature_stderr=2.0),
               optimizer=LM(checkpoint="fit.ckpt"))

Each may also be given as a dict of its fields. The result records them (``attrs['settings']``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

__all__ = ["Preparation", "Errors", "Constraints", "as_settings"]


@dataclass(frozen=True)
class Preparation:
    """How a volume becomes fitting points (:func:`xtds.fit`).

    Parameters
    ----------
    bragg
        Radius (r.l.u.) of the masks about the allowed Bragg reflections; None: none.
    q_min, q_max
        |q| range kept (Å⁻¹); None: unbounded.
    symmetrize
        Average each Laue orbit's valid voxels into one point (default); False fits every voxel.
    laue
        A Laue class name instead of the crystal's (e.g. ``"4/mmm"`` for a distorted cubic).
    max_points
        Fit a random subset of at most this many irreducible points (drawn with ``seed``), for
        volumes whose points hold far more information than a handful of constants needs; only the
        drawn orbits are read. The errors are those of the subset (larger than the whole volume's).
    seed
        Of the random subset.

    Masks and wedges beyond these are the accessor chain's: ``ds.tds.mask(...).tds.wedge(...)``.
    """

    bragg: float | None = None
    q_min: float | None = None
    q_max: float | None = None
    symmetrize: bool = True
    laue: str | None = None
    max_points: int | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("bragg", "q_min", "q_max"):
            v = getattr(self, name)
            if v is not None and not _non_negative(v):
                raise ValueError(f"Preparation({name}=...) must be a non-negative number or None, got {v!r}")
        if self.max_points is not None and (isinstance(self.max_points, bool) or int(self.max_points) < 1):
            raise ValueError(f"Preparation(max_points=...) must be a positive count or None, got {self.max_points!r}")


@dataclass(frozen=True)
class Errors:
    """How the fit's uncertainties are made, beyond the Gauss–Newton covariance of the residuals.

    Parameters
    ----------
    temperature_stderr
        Standard uncertainty of the temperature (K), propagated into the errors (0: exact).
    noise_configurations
        The data are a mean over this many sampled configurations (the paper's synthetic target):
        the covariance then comes from the observable's noise model instead of the residuals.
    noise_draws
        Single-configuration draws for that covariance.
    chi2_scale
        For ``loss="chi2"`` problems: ``"auto"`` (default) multiplies their variance by the reduced
        χ² when it exceeds 1 (the Birge ratio: the residuals say the σ or the model fall short,
        so the errors widen; they never shrink below what the σ give), ``"always"`` by the reduced
        χ² whatever it is (errors from the residuals alone), ``"never"``: the σ as absolute.
    """

    temperature_stderr: float = 0.0
    noise_configurations: int | None = None
    noise_draws: int = 200
    chi2_scale: str = "auto"

    def __post_init__(self):
        if not _non_negative(self.temperature_stderr):
            raise ValueError(f"Errors(temperature_stderr=...) must be a non-negative number of K, "
                             f"got {self.temperature_stderr!r}")
        if int(self.noise_draws) < 2:
            raise ValueError(f"Errors(noise_draws=...) must be at least 2, got {self.noise_draws!r}")
        if self.chi2_scale not in ("auto", "always", "never"):
            raise ValueError(f"Errors(chi2_scale=...) must be 'auto', 'always' or 'never', got {self.chi2_scale!r}")


@dataclass(frozen=True)
class Constraints:
    """Prior knowledge of the force constants, for any fit.

    Parameters
    ----------
    fixed
        Constants held at a value (eV/Å²) and not fitted: a mapping name → value, or a list of names
        (held at their starting values). Their standard errors are 0.
    priors
        Gaussian priors: a mapping name → (mean, σ) in eV/Å². Each adds the residual (φ − mean)/σ to
        the fit (a measurement of that constant): it pins combinations the data leave free and
        enters the covariance as such.

    Only free constants may be named (the sum rule's a0 … follow from them). Example:
    ``Constraints(fixed={"f3": 0.0}, priors={"e0": (0.0, 0.05)})``.
    """

    fixed: dict | tuple = ()
    priors: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        fixed = self.fixed
        if isinstance(fixed, str):
            fixed = (fixed,)
        if not isinstance(fixed, dict):
            fixed = {str(n): None for n in fixed}
        for n, v in fixed.items():
            if v is not None and (isinstance(v, bool) or not math.isfinite(float(v))):
                raise ValueError(f"Constraints(fixed=...): {n} = {v!r} is not a finite value in eV/Å²")
        priors = {}
        for n, mv in dict(self.priors).items():
            try:
                mean, sigma = (float(x) for x in mv)
            except (TypeError, ValueError):
                raise ValueError(f"Constraints(priors=...): give each prior as (mean, sigma) in eV/Å², got {n}: {mv!r}"
                                 ) from None
            if not (math.isfinite(mean) and math.isfinite(sigma) and sigma > 0):
                raise ValueError(f"Constraints(priors=...): {n} needs a finite mean and a positive σ, got {mv!r}")
            priors[str(n)] = (mean, sigma)
        both = sorted(set(fixed) & set(priors))
        if both:
            raise ValueError(f"Constraints: {both} are both fixed and given a prior; choose one")
        object.__setattr__(self, "fixed", fixed)
        object.__setattr__(self, "priors", priors)

    def __bool__(self) -> bool:
        return bool(self.fixed) or bool(self.priors)

    def check(self, names, derived=()) -> None:
        """A ``ValueError`` naming any constant that is not one of ``names`` (the model's free ones)."""
        for what, given in (("fixed", self.fixed), ("priors", self.priors)):
            bad = [n for n in given if n not in names]
            if bad:
                note = " (derived from the sum rule: constrain the constants it follows from)" if set(bad) & set(
                    derived) else ""
                raise ValueError(f"Constraints({what}=...): {bad} are not free constants of this model{note}; "
                                 f"its constants are {list(names)}")


def _non_negative(v) -> bool:
    """Whether ``v`` is a finite number ≥ 0 (not a bool)."""
    if isinstance(v, bool):
        return False
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and f >= 0


def as_settings(cls, value, what: str):
    """``value`` as a ``cls`` settings object: None → the defaults, a dict → its fields, an
    instance → itself; a ``TypeError`` naming ``what`` and the fields otherwise."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    names = [f.name for f in dataclasses.fields(cls)]
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise TypeError(f"{what}: {cls.__name__} has no setting {unknown}; its settings are {names}")
        return cls(**value)
    raise TypeError(f"{what} must be a {cls.__name__} (or a dict of {names}), got {type(value).__name__}")
