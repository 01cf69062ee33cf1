"""Training FLOPs counted from the model's own products, and the machine's GEMM rate on the same
shapes: how much of what the cores can do a run achieves (its utilisation).

**What is counted** (:class:`FlopCounter`): forward hooks on every ``nn.Linear`` (the base
layers, a LoRA's ``lora_A`` / ``lora_B``, the output head; a method's own linear layer that
says it is one, :func:`is_linear`: FROG's) and every attention module record,
per training step, the products that ran:

- a linear layer with ``in`` inputs and ``out`` outputs applied to ``n`` rows (positions) costs
  ``2 n in out`` in the forward pass, the same again in the backward pass for the gradient of
  its input when that input requires a gradient (it does not in front of the first trainable
  layer), and the same again for the gradient of its weight when the weight is trained (full
  fine-tuning; never a frozen base; FROG: 2 n K for its K trained entries, or the dense
  product where it computes one). The rows are what the layer really saw: every position of
  the padded batch for the decoder's layers, only the labelled positions for the head
  (spectune's loss projects onto the vocabulary only where a label is);
- an attention over ``s`` positions (query and key, the padded length) with ``d`` = heads x
  head size costs ``4 b s^2 d`` forward (scores, then the weighted sum; computed whole, as
  the CPU kernels do, not halved for the causal mask) and twice that backward when its input
  or one of its projections requires a gradient (the gradients of the queries, keys and
  values, computed together);
- a recomputed forward (gradient checkpointing) is counted again: these are the products the
  cores did, not the model's nominal FLOPs.

Not counted: element-wise work (norms, activations, softmax, the optimizer's update) and a
method's products outside those layers (DoRA's weight norm, OFT's rotation, FROG's guided
noise): the figure is a lower bound for those methods. The count equals
``torch.utils.flop_counter.FlopCounterMode``'s on the same step (tested on a tiny model).

**The machine's rate** (:func:`gemm_rates`, :func:`combined_rate`): ``torch.mm`` timed on each distinct linear shape of
the model at the run's rows per step, weighted by how often the model uses it; the median of
repeated rounds, in the training dtype, on the threads the run has. The utilisation is the
run's training FLOP/s over that rate: a quarter means the step spends three quarters of its
time on something other than GEMM-speed products (small products, element-wise work, the
optimizer, Python, padding is counted as work and shows as lost tokens instead).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spectune._io import write_json


@dataclass
class StepFlops:
    """The FLOPs one counter saw, split by kind (all in FLOP, summed over the steps)."""

    linear_forward: float = 0.0
    linear_backward: float = 0.0
    attention_forward: float = 0.0
    attention_backward: float = 0.0
    #: (in, out) of each linear shape -> rows it processed (for the GEMM rate's weights)
    shapes: dict[tuple[int, int], int] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return (
            self.linear_forward
            + self.linear_backward
            + self.attention_forward
            + self.attention_backward
        )


def _attention_width(module: torch.nn.Module) -> int | None:
    """Heads x head size of an attention module (None: not one spectune can read)."""
    config = getattr(module, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(module, "head_dim", None) or getattr(config, "head_dim", None)
    if head_dim is None and heads and getattr(config, "hidden_size", None):
        head_dim = config.hidden_size // heads
    if not heads or not head_dim:
        return None
    return int(heads) * int(head_dim)


class FlopCounter:
    """Count a model's training products while it trains (see the module docstring).

    Use as a context manager around the steps to count (hooks added on enter, removed on
    exit); :attr:`flops` holds the sums. Only training-mode forwards count: an evaluation or
    generation inside the block is not training work.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.flops = StepFlops()
        self._handles: list[Any] = []
        self.attention_modules = 0

    def __enter__(self) -> FlopCounter:
        for module in self.model.modules():
            if is_linear(module):
                self._handles.append(module.register_forward_hook(self._linear))
            elif type(module).__name__.endswith("Attention"):
                width = _attention_width(module)
                if width is not None:
                    self.attention_modules += 1
                    self._handles.append(
                        module.register_forward_hook(self._attention(width), with_kwargs=True)
                    )
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _counting(self, module: torch.nn.Module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _linear(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if not args or not self._counting(module):
            return
        x = args[0]
        rows = x.numel() // module.in_features
        one = 2.0 * rows * module.in_features * module.out_features
        f = self.flops
        f.linear_forward += one
        f.linear_backward += one * int(x.requires_grad)
        own = getattr(module, "weight_grad_flops", None)  # a method's own trained part
        if own is not None:
            f.linear_backward += float(own(rows))
        elif module.weight.requires_grad:
            f.linear_backward += one
        key = (module.in_features, module.out_features)
        f.shapes[key] = f.shapes.get(key, 0) + rows

    def _attention(self, width: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if not self._counting(module):
                return
            hidden = args[0] if args else kwargs.get("hidden_states")
            if hidden is None or hidden.dim() != 3:
                return
            b, s = hidden.shape[0], hidden.shape[1]
            one = 4.0 * b * s * s * width
            self.flops.attention_forward += one
            if hidden.requires_grad or any(p.requires_grad for p in module.parameters()):
                self.flops.attention_backward += 2 * one

        return hook


def gemm_rates(
    shapes: Iterable[tuple[int, int]],
    rows: int,
    dtype: torch.dtype = torch.float32,
    *,
    rounds: int = 5,
    min_seconds: float = 0.05,
) -> dict[tuple[int, int], float]:
    """FLOP per second of ``torch.mm`` on each ``(in, out)`` shape, timed as a
    ``rows x in @ in x out`` product: the median of ``rounds`` rounds, each repeating the
    product for at least ``min_seconds`` (after one untimed product that warms the kernel)."""
    shapes = list(dict.fromkeys(shapes))
    if not shapes or rows < 1:
        raise ValueError("gemm_rates needs at least one (in, out) shape and rows >= 1")
    rates = {}
    for n_in, n_out in shapes:
        a = torch.randn(rows, n_in, dtype=dtype)
        b = torch.randn(n_in, n_out, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(rounds):
            reps, start = 0, time.perf_counter()
            while True:
                torch.mm(a, b)
                reps += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
            times.append(elapsed / reps)
        rates[(n_in, n_out)] = 2.0 * rows * n_in * n_out / statistics.median(times)
    return rates


def combined_rate(rates: dict[tuple[int, int], float], shapes: dict[tuple[int, int], int]) -> float:
    """The rate of the model's mix of products: total FLOP over the time the mix takes at
    ``rates``, each shape's FLOP share being its rows (``shapes``) x in x out (a weighted
    harmonic mean of the rates)."""
    work = {k: float(n) * k[0] * k[1] for k, n in shapes.items() if n > 0}
    if not work:
        raise ValueError("combined_rate needs at least one shape with rows")
    missing = [k for k in work if k not in rates]
    if missing:
        raise ValueError(f"no measured rate for shape {missing[0]}")
    return sum(work.values()) / sum(w / rates[k] for k, w in work.items())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_key(dtype: torch.dtype, rows: int) -> str:
    """What a measured GEMM rate depends on: the CPU, the kernels torch picked for it, the
    threads, torch's version, the dtype and the rows of the products."""
    return (
        f"{_cpu_name()}|{torch.backends.cpu.get_cpu_capability()}|"
        f"threads={torch.get_num_threads()}|torch={torch.__version__}|{dtype}|rows={rows}"
    )


def machine_rate(
    shapes: dict[tuple[int, int], int],
    rows: int,
    dtype: torch.dtype = torch.float32,
    cache: Path | None = None,
) -> float:
    """:func:`combined_rate` of this machine's :func:`gemm_rates` on ``shapes`` at ``rows``
    (rounded up to a multiple of 32, so runs of nearby batch lengths share a measurement); the
    per-shape rates are kept in the JSON file ``cache`` under :func:`machine_key`, and only the
    shapes not yet there are timed (a few tenths of a second each)."""
    rows = max(32, -(-int(rows) // 32) * 32)
    key = machine_key(dtype, rows)
    stored: dict[str, Any] = {}
    if cache is not None:
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
    if not isinstance(stored, dict):
        stored = {}
    known = stored.get(key) if isinstance(stored.get(key), dict) else {}
    rates: dict[tuple[int, int], float] = {}
    for name, rate in known.items():
        try:
            n_in, n_out = (int(x) for x in name.split("x"))
        except ValueError:
            continue
        if isinstance(rate, (int, float)) and rate > 0:
            rates[(n_in, n_out)] = float(rate)
    todo = [k for k, n in shapes.items() if n > 0 and k not in rates]
    if todo:
        rates.update(gemm_rates(todo, rows, dtype, rounds=3, min_seconds=0.02))
        if cache is not None:
            stored[key] = {f"{a}x{b}": r for (a, b), r in rates.items()}
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                write_json(cache, stored)
            except OSError:  # an unwritable cache: measured again next time
                pass
    return combined_rate(rates, shapes)


def is_linear(module: torch.nn.Module) -> bool:
    """An ``nn.Linear``, or a method's layer that computes one and says so
    (``counts_as_linear = True``, with ``in_features``, ``out_features`` and a frozen ``weight``;
    FROG's layer): counted as a product of its shape, plus its ``weight_grad_flops(rows)`` (the
    FLOPs of the gradient of what it trains) when it has one."""
    return isinstance(module, torch.nn.Linear) or bool(getattr(module, "counts_as_linear", False))


def linear_shapes(model: torch.nn.Module, exclude: Iterable[torch.nn.Module] = ()) -> dict:
    """(in, out) -> how many linear layers (:func:`is_linear`) of ``model`` have that shape
    (``exclude`` left out, e.g. the output head)."""
    skip = {id(m) for m in exclude}
    out: dict[tuple[int, int], int] = {}
    for m in model.modules():
        if is_linear(m) and id(m) not in skip:
            key = (m.in_features, m.out_features)
            out[key] = out.get(key, 0) + 1
    return out


__all__ = [
    "FlopCounter",
    "StepFlops",
    "is_linear",
    "combined_rate",
    "gemm_rates",
    "linear_shapes",
    "machine_key",
    "machine_rate",
]
