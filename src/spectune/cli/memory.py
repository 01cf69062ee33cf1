"""``spectune memory`` (old name ``plan``): estimated peak training memory per method, from the model's config.json.

Every registered method is estimated through its own memory terms
(:func:`spectune.tuning.scale.memory.estimate_memory`); its settings come from the config
sections as for ``spectune tune`` (``key=value``: ``lora.r=32 frog.budget=0.02``), with
``--r`` setting ``r`` in every section that has one (the LoRA family's, SHiRA's).
"""

from __future__ import annotations

import argparse

HELP = (
    "estimate the peak memory of training a model (weights, adapter, gradients, optimizer, "
    "activations with and without checkpointing) for every method, and the largest batch "
    "that fits a budget; reads config.json only"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="'default', a model folder (only config.json is read), a .gguf file or a hub id "
        "(org/name[@revision])",
    )
    parser.add_argument(
        "--method",
        default="all",
        help="a registered method, or 'all' (default): one row per method",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="method settings as for spectune tune, after MODEL (frog.budget=0.02)",
    )
    parser.add_argument(
        "--r",
        type=int,
        default=16,
        help="r of every section that has one: LoRA, SHiRA... (default: 16)",
    )
    # the old name of frog.budget=X, kept for one release
    parser.add_argument("--frog-budget", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (default: 4)")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per example (default: 2048)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="model_dtype (default: float32, spectune's default)",
    )
    parser.add_argument(
        "--attn",
        default="sdpa",
        choices=("sdpa", "eager"),
        help="attn_implementation (default: sdpa)",
    )
    parser.add_argument(
        "--optim",
        default="adamw_torch",
        help="optimizer: adamw_torch (default), paged_adamw_32bit, "
        "paged_adamw_8bit, adamw_8bit, sgd",
    )
    parser.add_argument(
        "--checkpointing", action="store_true", help="detail the peak with gradient checkpointing"
    )
    parser.add_argument(
        "--budget-gib",
        type=float,
        default=None,
        help="memory budget: also print the largest batch that fits it",
    )
    parser.add_argument("--json", action="store_true", help="print the estimates as JSON")


def _gib(n: int) -> float:
    return n / 2**30


def run(args: argparse.Namespace) -> int:
    import json
    import math
    from dataclasses import fields

    from spectune.errors import SpectuneError
    from spectune.models.loading import resolve_model_dir
    from spectune.tuning.config import TuneConfig, apply_overrides
    from spectune.tuning.methods import METHODS, get_method, meta_model
    from spectune.tuning.scale.memory import estimate_memory, estimate_methods, largest_batch

    if args.budget_gib is not None and not (math.isfinite(args.budget_gib) and args.budget_gib > 0):
        raise SpectuneError(
            f"--budget-gib must be a finite number of GiB > 0, got {args.budget_gib!r}"
        )
    folder = resolve_model_dir(args.model)
    meta = meta_model(folder)
    data = {"model": str(folder), "model_dtype": args.dtype, "attn_implementation": args.attn}
    for section, cls in METHODS.sections().items():
        if any(f.name == "r" for f in fields(cls)):
            data[section] = {"r": args.r}
    overrides = list(args.overrides)
    if args.frog_budget is not None:
        overrides.insert(0, f"frog.budget={args.frog_budget!r}")
    data = apply_overrides(data, overrides)
    kwargs = {
        "batch": args.batch,
        "seq": args.seq,
        "optim": args.optim,
        "checkpointing": args.checkpointing,
    }

    if args.method == "all":
        estimates = estimate_methods(folder, data, meta=meta, **kwargs)
    else:
        get_method(args.method)  # an unknown name lists the registered ones
        config = TuneConfig.from_dict({**data, "method": args.method}, foreign_sections="drop")
        estimate = estimate_memory(folder, config, meta=meta, **kwargs)
        if estimate is None:
            raise SpectuneError(f"the planner has no memory model for method {args.method!r}")
        estimates = [estimate]
    budget = None if args.budget_gib is None else int(args.budget_gib * 2**30)
    fits = (
        {
            p.method: {
                "without": largest_batch(p, budget, checkpointing=False),
                "with": largest_batch(p, budget, checkpointing=True),
            }
            for p in estimates
        }
        if budget is not None
        else {}
    )
    if args.json:
        out = [
            {**p.to_dict(), **({"largest_batch": fits[p.method]} if fits else {})}
            for p in estimates
        ]
        print(json.dumps(out, indent=2))
        return 0

    p0 = estimates[0]
    print(
        f"{folder.name}: {p0.params / 1e9:.3g}B parameters; batch {args.batch} x {args.seq} "
        f"tokens, model_dtype={args.dtype}, {args.attn} attention, {args.optim}; GiB"
    )
    head = (
        f"{'method':<8} {'weights':>8} {'adapter':>8} {'grads':>8} {'optim':>8} "
        f"{'act':>8} {'act ckpt':>8} {'peak':>8} {'peak ckpt':>9}"
    )
    if fits:
        head += f"  {'batch fits (ckpt)':>17}"
    print(head)
    for p in estimates:
        line = (
            f"{p.method:<8} {_gib(p.weights):8.2f} {_gib(p.adapter + p.buffers):8.3f} "
            f"{_gib(p.gradients):8.3f} {_gib(p.optimizer):8.3f} "
            f"{_gib(p.activations_full):8.2f} {_gib(p.activations_checkpointed):8.2f} "
            f"{_gib(p.peak_with(False)):8.2f} {_gib(p.peak_with(True)):9.2f}"
        )
        if fits:
            f = fits[p.method]
            line += f"  {f['without']:>9} ({f['with']})"
        print(line)
    print(f"trainable: {', '.join(f'{p.method} {p.trainable:,}' for p in estimates)}")
    print(
        f"overhead (process, in every peak): {_gib(p0.overhead):.2f} GiB; 'adapter' includes "
        "sparse methods' index buffers; 4-bit methods: weights at 4 bits, the rest float32"
    )
    print(
        "peaks are live memory: on a CPU glibc's allocator can keep more resident after the "
        "first step (measured up to 1.7x); MALLOC_MMAP_THRESHOLD_=131072 holds it to the "
        "estimate, with slower steps"
    )
    if budget is not None:
        print(
            f"budget {args.budget_gib:g} GiB: the largest batch of {args.seq} tokens that "
            "fits, without (and with) gradient checkpointing; 0: not even one"
        )
    return 0
