"""FrogConfig: every setting of a FROG fine-tune, validated where it is made.

Each field carries its help text in ``metadata["help"]`` (the CLI and the docs read it from
there, like peft's configs). Invalid values raise :class:`~spectune.errors.SpectuneError`
naming the field and the fix, at construction time, not deep inside a training step.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from spectune import _check as check
from spectune.errors import SpectuneError
from spectune.models.targets import ALL_LINEAR

SELECTIONS = ("per_matrix", "global")
SVD_METHODS = ("exact", "randomized")
IMPORTANCES = ("frobenius", "alpha")
OVERPARAM_MODES = ("none", "away", "towards")
SCORE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class FrogConfig:
    """Settings of FROG (Frobenius-guided Relevance Optimization with Guided noise).

    See :mod:`spectune.tuning.methods.frog` for the method. Only ``budget`` is usually changed; the defaults
    start training exactly at the pretrained model with no noise.
    """

    budget: float = field(
        default=0.01,
        metadata={
            "help": "G, the fraction of all target weights that is trainable, in (0, 1]; "
            "T_trainable = round(G * T) where T is the number of target weights."
        },
    )
    selection: str = field(
        default="per_matrix",
        metadata={
            "help": "'per_matrix': each matrix gets round(T_trainable * R_i) weights "
            "(largest-remainder rounding, capped at its size) and keeps its top ones by "
            "relevance S_ij; 'global': the top T_trainable weights by S_ij over all target "
            "matrices together."
        },
    )
    target_modules: str | list[str] = field(
        default=ALL_LINEAR,
        metadata={
            "help": "'all-linear' (every nn.Linear except the output head), a list of module "
            "names or name suffixes (e.g. ['q_proj', 'v_proj']), or a regular expression "
            "that must match a whole module name."
        },
    )
    exclude_modules: list[str] | None = field(
        default=None,
        metadata={"help": "module names or suffixes to leave out of target_modules' matches."},
    )
    svd: str = field(
        default="exact",
        metadata={
            "help": "'exact': full thin SVD (torch.linalg.svd); 'randomized': truncated "
            "randomized SVD of rank svd_rank (torch.svd_lowrank), much faster on large "
            "matrices, but S is built from the top svd_rank components only and selects "
            "noticeably different weights (see bench/frog_relevance.py)."
        },
    )
    svd_rank: int | None = field(
        default=None,
        metadata={
            "help": "number of singular triplets used for S. None: all (exact) or 256 "
            "(randomized). With 'exact' a value truncates the exact SVD."
        },
    )
    svd_niter: int = field(
        default=2,
        metadata={"help": "power iterations of the randomized SVD (more: slower, more exact)."},
    )
    importance: str = field(
        default="frobenius",
        metadata={
            "help": "matrix importance for 'per_matrix': 'frobenius' (R_i = ||W_i||_F / "
            "sum_j ||W_j||_F) or 'alpha' (EXPERIMENTAL: R_i tilted by the power-law alpha of "
            "each matrix's spectrum, see spectune.tuning.methods.frog.scoring.alpha_importance)."
        },
    )
    alpha_power: float = field(
        default=1.0,
        metadata={
            "help": "exponent gamma of the alpha tilt: weight_i = ||W_i||_F * alpha_i**gamma "
            "(0 gives back plain Frobenius importance)."
        },
    )
    alpha_range: tuple[float, float] = field(
        default=(2.0, 6.0),
        metadata={
            "help": "alphas are clipped to this range before the tilt, so one bad power-law "
            "fit cannot take the whole budget."
        },
    )
    overparam: str = field(
        default="none",
        metadata={
            "help": "budget for overparameterized matrices (power-law alpha > overparam_alpha, "
            "the FROG paper's WeightWatcher section): 'none', 'away' (their importance R_i "
            "times overparam_factor) or 'towards' (divided by it); then renormalized. "
            "per_matrix selection only; see spectune.tuning.methods.frog.budget.overparam_importance."
        },
    )
    overparam_factor: float = field(
        default=0.5,
        metadata={"help": "the factor in (0, 1) of overparam='away' / 'towards'."},
    )
    overparam_alpha: float = field(
        default=6.0,
        metadata={"help": "alpha above which a matrix counts as overparameterized."},
    )
    init_scale: float = field(
        default=0.0,
        metadata={
            "help": "paper's alpha: each trainable weight's delta starts at "
            "init_scale * S_ij * N(0, 1). 0 (default) starts exactly at the pretrained model."
        },
    )
    noise_scale: float = field(
        default=0.0,
        metadata={
            "help": "paper's beta: in training forward passes the frozen weights get "
            "noise_scale * S_ij * N(0, noise_sigma), fresh each pass, never stored. 0: off."
        },
    )
    noise_sigma: float = field(
        default=1.0,
        metadata={"help": "paper's sigma_noise: standard deviation of the guided noise."},
    )
    noise_decay_steps: int | None = field(
        default=None,
        metadata={
            "help": "if set, the noise decays linearly from full strength to zero over this "
            "many training forward passes (see spectune.tuning.methods.frog.set_frog_step)."
        },
    )
    score_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the relevance scores kept for guided noise (one value per "
            "frozen target weight): 'float32', or 'bfloat16'/'float16' to halve that memory."
        },
    )
    seed: int = field(
        default=0,
        metadata={"help": "seed of the randomized SVD, the delta init and the guided noise."},
    )

    def __post_init__(self) -> None:
        self.budget = _number("budget", self.budget)
        if not (0.0 < self.budget <= 1.0):
            raise SpectuneError(
                f"FrogConfig.budget must be in (0, 1] (a fraction of the target weights, e.g. "
                f"0.01 for 1%), got {self.budget!r}"
            )
        self.selection = _choice("selection", self.selection, SELECTIONS)
        self.target_modules = _targets(self.target_modules)
        if self.exclude_modules is not None:
            if isinstance(self.exclude_modules, str):
                self.exclude_modules = [self.exclude_modules]
            self.exclude_modules = _name_list("exclude_modules", self.exclude_modules)
        self.svd = _choice("svd", self.svd, SVD_METHODS)
        if self.svd_rank is not None:
            self.svd_rank = _int("svd_rank", self.svd_rank, minimum=1)
        self.svd_niter = _int("svd_niter", self.svd_niter, minimum=0)
        self.importance = _choice("importance", self.importance, IMPORTANCES)
        if self.importance == "alpha" and self.selection == "global":
            raise SpectuneError(
                "FrogConfig.importance='alpha' only applies to selection='per_matrix' (with "
                "'global' the layer importance is the sum of the selected scores); use one of "
                "the two"
            )
        self.alpha_power = _number("alpha_power", self.alpha_power)
        try:
            low, high = (float(v) for v in self.alpha_range)
        except (TypeError, ValueError):
            raise SpectuneError(
                f"FrogConfig.alpha_range must be two numbers (low, high), got {self.alpha_range!r}"
            ) from None
        if not (0.0 < low < high and math.isfinite(high)):
            raise SpectuneError(
                f"FrogConfig.alpha_range must satisfy 0 < low < high < inf, got {(low, high)}"
            )
        self.alpha_range = (low, high)
        self.overparam = _choice("overparam", self.overparam, OVERPARAM_MODES)
        self.overparam_factor = _number("overparam_factor", self.overparam_factor)
        if not 0.0 < self.overparam_factor < 1.0:
            raise SpectuneError(
                f"FrogConfig.overparam_factor must be in (0, 1) (0.5 halves or doubles the "
                f"share of overparameterized matrices), got {self.overparam_factor!r}"
            )
        self.overparam_alpha = _number("overparam_alpha", self.overparam_alpha)
        if self.overparam != "none" and self.selection == "global":
            raise SpectuneError(
                "FrogConfig.overparam applies to selection='per_matrix' (with 'global' there "
                "are no per-matrix shares to move); use overparam='none' or per_matrix"
            )
        self.init_scale = _number("init_scale", self.init_scale, nonnegative=True)
        self.noise_scale = _number("noise_scale", self.noise_scale, nonnegative=True)
        self.noise_sigma = _number("noise_sigma", self.noise_sigma)
        if self.noise_sigma <= 0:
            raise SpectuneError(
                f"FrogConfig.noise_sigma must be > 0 (a standard deviation), got "
                f"{self.noise_sigma!r}; use noise_scale=0 to switch the noise off"
            )
        if self.noise_decay_steps is not None:
            self.noise_decay_steps = _int("noise_decay_steps", self.noise_decay_steps, minimum=1)
        self.score_dtype = _choice("score_dtype", self.score_dtype, SCORE_DTYPES)
        self.seed = _int("seed", self.seed, minimum=0)

    # -- serialization --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict (tuples become lists)."""
        out = asdict(self)
        out["alpha_range"] = list(self.alpha_range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> FrogConfig:
        """Build a config from :meth:`to_dict` output.

        Args:
            data: the dict; unknown keys are an error (a typo must not be silently ignored).
            source: what the dict came from (a file name), for error messages.

        Raises:
            SpectuneError: unknown keys or invalid values.
        """
        if not isinstance(data, dict):
            raise SpectuneError(f"{source}: a FROG config must be a JSON object, got {data!r}")
        check.unknown_keys(source, data, (f.name for f in fields(cls)), "FROG config")
        kwargs = dict(data)
        if isinstance(kwargs.get("alpha_range"), list):
            kwargs["alpha_range"] = tuple(kwargs["alpha_range"])
        return cls(**kwargs)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (with its default), for CLIs and docs."""
        out = {}
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            out[f.name] = f"{f.metadata['help']} (default: {default!r})"
        return out


# -- validation helpers -------------------------------------------------------------------


def _number(name: str, value: Any, *, nonnegative: bool = False) -> float:
    return check.number(f"FrogConfig.{name}", value, nonnegative=nonnegative)


def _int(name: str, value: Any, *, minimum: int) -> int:
    return check.integer(f"FrogConfig.{name}", value, minimum=minimum)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    return check.choice(f"FrogConfig.{name}", value, choices)


def _name_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple, set)) or not value:
        raise SpectuneError(
            f"FrogConfig.{name} must be a non-empty list of module names, got {value!r}"
        )
    out = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise SpectuneError(
                f"FrogConfig.{name} must hold non-empty strings (module names), got {item!r}"
            )
        out.append(item)
    return sorted(out) if isinstance(value, set) else out


def _targets(value: Any) -> str | list[str]:
    if isinstance(value, str):
        if not value:
            raise SpectuneError(
                "FrogConfig.target_modules is empty; use 'all-linear', a list of module names "
                "or a regular expression"
            )
        if value.lower() == ALL_LINEAR:
            return ALL_LINEAR
        try:
            re.compile(value)
        except re.error as exc:
            raise SpectuneError(
                f"FrogConfig.target_modules {value!r} is not a valid regular expression "
                f"({exc}); pass a list of module names instead"
            ) from None
        return value
    return _name_list("target_modules", value)
