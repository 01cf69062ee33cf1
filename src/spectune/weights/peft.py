"""PEFT LoRA adapters: configs, the rank/alpha pattern rules, and A/B pairing by module name.

A LoRA layer adds ``Delta W = scaling * B @ A`` to a base weight ``W`` (``out x in``), with
``A`` of shape ``(r, in)`` and ``B`` of shape ``(out, r)``; ``scaling = lora_alpha / r``, or
``lora_alpha / sqrt(r)`` with rsLoRA (``use_rslora``). ``r`` and ``lora_alpha`` can differ per
module through ``rank_pattern`` / ``alpha_pattern``; a pattern key ``k`` applies to a module
``m`` when ``re.match(rf"(.*\\.)?({k})$", m)`` succeeds, the first such key in the dict's order
wins (PEFT's rule), and ``m`` is the module's name in the base model
(``model.layers.0.self_attn.q_proj``).

Pairing is by normalized module name and adapter name, never by position in the file. Live
LoRA layers (a ``PeftModel`` or a model with injected adapters) give their own ``r`` and
``scaling``; files take them from ``adapter_config.json``.

Variants: embeddings (``lora_embedding_A`` ``(r, num_embeddings)``, ``lora_embedding_B``
``(embedding_dim, r)``, update ``(B A)^T``), ``fan_in_fan_out`` layers (update ``(B A)^T``),
convolutions (``A`` ``(r, in, *kernel)``, ``B`` ``(out, r, 1, ...)``) and DoRA (a magnitude
vector per output, reported as ``magnitude_name``). Not supported: non-LoRA PEFT types
(AdaLoRA, LoHa, IA3...) and LoRA on raw parameters (``target_parameters``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spectune.errors import SpectuneError
from spectune.weights.names import natural_key, normalize_module_name, parse_lora_name

#: the source and tensor types of :mod:`spectune.weights.sources`, which imports this module
#: (pairing is a method of its sources): named here without importing it, so the two stay
#: one-way
WeightSource = Any
TensorInfo = Any

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class LoraPair:
    """One LoRA update ``Delta W = scaling * B @ A`` of one module and adapter.

    Attributes:
        module: normalized base module name, e.g. ``model.layers.0.self_attn.q_proj``
            (matches ``TensorInfo.key`` of the base weight).
        name_A: source name of the ``A`` tensor (``lora_A`` / ``lora_embedding_A``).
        name_B: source name of the ``B`` tensor.
        r: the rank (rows of ``A``).
        shape: ``(out, in)`` of ``Delta W`` as a matrix, oriented like the base weight
            (conv kernels flattened into ``in``); :meth:`WeightSource.load_pair` returns
            factors of shapes ``(out, r)`` and ``(r, in)``.
        scaling: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA.
        magnitude_name: the DoRA ``lora_magnitude_vector`` tensor, or ``None``.
        adapter_name: the adapter (``"default"`` for saved adapter folders).
        lora_alpha: the alpha in effect for this module.
        use_rslora: whether the scaling is rsLoRA's.
        layer_type: ``"linear"``, ``"embedding"``, ``"conv1d"``, ``"conv2d"`` or ``"conv3d"``.
        transposed: PEFT adds ``(B A)^T`` (embeddings, ``fan_in_fan_out``); ``load_pair``
            already accounts for it.
        base_shape: the shape of the base weight tensor the update is added to.
    """

    module: str
    name_A: str
    name_B: str
    r: int
    shape: tuple[int, int]
    scaling: float
    magnitude_name: str | None
    adapter_name: str
    lora_alpha: float
    use_rslora: bool
    layer_type: str
    transposed: bool
    base_shape: tuple[int, ...]

    @property
    def name(self) -> str:
        """Row name for reports: ``<module>.lora_BA``."""
        return f"{self.module}.lora_BA"


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _check_config(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate the LoRA fields of a config dict; returns a normalized copy."""
    out = dict(cfg)
    peft_type = out.get("peft_type") or "LORA"
    peft_type = str(getattr(peft_type, "value", peft_type)).upper()  # PeftType enum -> "LORA"
    out["peft_type"] = peft_type
    if peft_type != "LORA":  # other PEFT types: listed, but not paired (see pair_lora)
        return out

    def bad(field: str, why: str) -> SpectuneError:
        return SpectuneError(f"{where}: {field} {why}; fix the adapter config")

    r = out.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise bad("r", f"must be a positive integer, got {r!r}")
    alpha = out.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise bad("lora_alpha", f"must be a number, got {alpha!r}")
    for flag in ("use_rslora", "fan_in_fan_out", "use_dora"):
        value = out.get(flag) or False
        if not isinstance(value, bool):
            raise bad(flag, f"must be true or false, got {value!r}")
        out[flag] = value
    for field, kind in (("rank_pattern", "r"), ("alpha_pattern", "lora_alpha")):
        pattern = out.get(field) or {}
        if not isinstance(pattern, Mapping):
            raise bad(field, f"must be a mapping of module patterns to {kind}, got {pattern!r}")
        for key, value in pattern.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind == "r":
                ok = ok and isinstance(value, int) and value > 0
            if not ok:
                raise bad(field, f"entry {key!r}: {value!r} is not a valid {kind}")
            try:
                re.compile(str(key))
            except re.error as exc:
                raise bad(field, f"key {key!r} is not a valid regular expression ({exc})") from exc
        out[field] = dict(pattern)
    out["r"], out["lora_alpha"] = r, alpha
    return out


def read_lora_config(config: Any) -> dict[str, Any]:
    """A LoRA config as a checked dict.

    Args:
        config: a dict, a ``peft.LoraConfig`` (anything with ``to_dict()``), or the path of an
            ``adapter_config.json`` or of the folder holding it.

    Raises:
        SpectuneError: the file is missing or not valid JSON, or a field is invalid (``r`` not
            a positive integer, ``lora_alpha`` not a number, a bad pattern...).
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / ADAPTER_CONFIG
        if not path.is_file():
            raise SpectuneError(
                f"no adapter config at {path}; pass the adapter_config.json saved with the adapter"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SpectuneError(
                f"{path} is not valid JSON ({exc}); restore the adapter_config.json that peft "
                "saved with the adapter"
            ) from exc
        if not isinstance(data, dict):
            raise SpectuneError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return _check_config(data, str(path))
    if isinstance(config, Mapping):
        return _check_config(config, "lora_config")
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        data = to_dict()
        data = {k: (sorted(v) if isinstance(v, set) else v) for k, v in data.items()}
        return _check_config(data, f"the {type(config).__name__}")
    raise SpectuneError(
        f"lora_config must be a dict, a peft LoraConfig or a path, got {type(config).__name__}"
    )


def find_adapter_config(path: Path) -> dict[str, Any] | None:
    """The ``adapter_config.json`` in ``path`` (a folder) or beside it (a file), if any."""
    folder = path if path.is_dir() else path.parent
    candidate = folder / ADAPTER_CONFIG
    return read_lora_config(candidate) if candidate.is_file() else None


def pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """The first key of ``rank_pattern`` / ``alpha_pattern`` that applies to ``module``.

    PEFT's rule: key ``k`` applies when ``re.match(rf"(.*\\.)?({k})$", module)`` succeeds, so
    ``"q_proj"`` matches every ``...q_proj`` and ``"layers.1.self_attn.q_proj"`` one module;
    keys are regular expressions.
    """
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def module_rank_alpha(config: Mapping[str, Any], module: str) -> tuple[int, float]:
    """``(r, lora_alpha)`` of ``module`` under a checked config (patterns applied)."""
    r_key = pattern_key(config.get("rank_pattern") or {}, module)
    a_key = pattern_key(config.get("alpha_pattern") or {}, module)
    r = config["rank_pattern"][r_key] if r_key is not None else config["r"]
    alpha = config["alpha_pattern"][a_key] if a_key is not None else config["lora_alpha"]
    return int(r), float(alpha)


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` for rsLoRA."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


# ---------------------------------------------------------------------------------------------
# Adapter folders
# ---------------------------------------------------------------------------------------------


def _config_for(source: WeightSource, adapter: str, module: str) -> dict[str, Any]:
    configs = source.peft_configs
    config = configs.get(adapter)
    if config is None and len(configs) == 1:
        config = next(iter(configs.values()))
    if config is None:
        raise SpectuneError(
            f"no LoRA config for adapter {adapter!r} (module {module}) in {source._label()}; put "
            "the adapter_config.json saved by peft next to the weights or pass lora_config="
        )
    return config


def _pair_layer_type(a: TensorInfo, b: TensorInfo, token: str, module: str) -> str:
    if token.startswith("lora_embedding"):
        return "embedding"
    if a.ndim != b.ndim:
        raise SpectuneError(
            f"LoRA factors of {module} have different numbers of dimensions: {a.name} "
            f"{a.shape} and {b.name} {b.shape}"
        )
    if a.ndim == 2:
        return "linear"
    if any(d != 1 for d in b.shape[2:]):
        raise SpectuneError(
            f"{b.name} has kernel {b.shape[2:]}; only 1x1 lora_B convolutions are supported"
        )
    kinds = {3: "conv1d", 4: "conv2d", 5: "conv3d"}
    if a.ndim not in kinds:
        raise SpectuneError(f"{a.name} has shape {a.shape}; expected 2 to 5 dimensions")
    return kinds[a.ndim]


def _lora_groups(source: WeightSource) -> dict[tuple[str, str], dict[str, Any]]:
    """The LoRA tensors of a source by (normalized module, adapter): ``"A"``, ``"B"``,
    ``"magnitude"``, the tokens of A and B, and the module's ``"raw"`` name."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    default_adapter = next(iter(source.peft_configs), "default")
    for info in source.tensors():
        parsed = parse_lora_name(info.name)
        if parsed is None:
            continue
        adapter = parsed.adapter or default_adapter
        module = normalize_module_name(parsed.module)
        group = groups.setdefault((module, adapter), {"raw": parsed.module})
        if parsed.part in group:
            raise SpectuneError(
                f"module {module} (adapter {adapter!r}) has two LoRA {parsed.part} tensors: "
                f"{group[parsed.part].name} and {info.name}"
            )
        group[parsed.part] = info
        if parsed.part in ("A", "B"):
            group[f"token_{parsed.part}"] = parsed.token
    if not groups:
        raise SpectuneError(
            f"{source._label()} has no LoRA tensors (lora_A / lora_B); it is not a LoRA adapter, "
            "analyze it without peft=True"
        )
    return groups


def _pair_of(source: WeightSource, module: str, adapter: str, group: dict[str, Any]) -> LoraPair:
    """The :class:`LoraPair` of one module and adapter from its grouped tensors (see
    :func:`pair_lora`, which names the errors)."""
    a: TensorInfo | None = group.get("A")
    b: TensorInfo | None = group.get("B")
    mag: TensorInfo | None = group.get("magnitude")
    if a is None or b is None:
        have = b or a or mag
        assert have is not None
        missing = "lora_A" if a is None else "lora_B"
        raise SpectuneError(
            f"module {module} (adapter {adapter!r}) has {have.name} but no {missing}; the "
            "adapter file is incomplete (re-save it with peft)"
        )
    layer_type = _pair_layer_type(a, b, group["token_A"], module)
    if a.ndim < 2 or b.ndim < 2 or a.shape[0] != b.shape[1]:
        raise SpectuneError(
            f"LoRA factors of {module} do not fit: {a.name} has shape {a.shape} (r rows) "
            f"and {b.name} has shape {b.shape} (r columns); their ranks must agree"
        )
    rank = a.shape[0]
    live = source._live_lora(group["raw"], adapter)
    fan_in_fan_out = False
    if live is not None:
        r, alpha = live["r"], live["lora_alpha"]
        scaling, use_rslora = live["scaling"], live["use_rslora"]
        fan_in_fan_out = live["fan_in_fan_out"]
        if r is None:
            r = rank
    else:
        config = _config_for(source, adapter, module)
        r, alpha = module_rank_alpha(config, module)
        use_rslora = bool(config.get("use_rslora"))
        scaling = lora_scaling(r, alpha, use_rslora)
        fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    if r != rank:
        raise SpectuneError(
            f"the config gives module {module} rank r={r}, but {a.name} has shape {a.shape} "
            f"(rank {rank}); the adapter_config.json does not belong to these weights"
        )
    transposed = layer_type == "embedding" or (layer_type == "linear" and fan_in_fan_out)
    out_dim = b.shape[0]
    in_numel = 1
    for d in a.shape[1:]:
        in_numel *= d
    if transposed:
        shape = (in_numel, out_dim)
        base_shape: tuple[int, ...] = shape
    else:
        shape = (out_dim, in_numel)
        base_shape = (out_dim, *a.shape[1:])
    if mag is not None and mag.numel != out_dim:
        raise SpectuneError(
            f"DoRA magnitude {mag.name} has {mag.numel} entries but {b.name} has {out_dim} "
            "outputs; the adapter file is inconsistent"
        )
    return LoraPair(
        module=module,
        name_A=a.name,
        name_B=b.name,
        r=int(rank),
        shape=shape,
        scaling=float(scaling),
        magnitude_name=mag.name if mag is not None else None,
        adapter_name=adapter,
        lora_alpha=float(alpha) if alpha is not None else float("nan"),
        use_rslora=bool(use_rslora),
        layer_type=layer_type,
        transposed=transposed,
        base_shape=base_shape,
    )


def pair_lora(source: WeightSource) -> list[LoraPair]:
    """Pair the LoRA tensors of a source by (normalized module, adapter).

    Args:
        source: any weight source holding ``lora_A`` / ``lora_B`` tensors.

    Returns:
        One :class:`LoraPair` per LoRA layer and adapter, in natural module order.

    Raises:
        SpectuneError: no LoRA tensors; a ``lora_A`` without ``lora_B`` (or the reverse, or a
            DoRA magnitude without both), naming the module; ranks or shapes that do not fit
            (naming both tensors); a rank that disagrees with the config; no config.
    """
    for adapter, config in source.peft_configs.items():
        if config.get("peft_type", "LORA") != "LORA":
            raise SpectuneError(
                f"{source._label()}: adapter {adapter!r} has peft_type {config['peft_type']!r}; "
                "only LoRA adapters (incl. rsLoRA and DoRA) can be paired"
            )
    groups = _lora_groups(source)
    return [
        _pair_of(source, module, adapter, group)
        for (module, adapter), group in sorted(
            groups.items(), key=lambda item: (natural_key(item[0][0]), item[0][1])
        )
    ]
