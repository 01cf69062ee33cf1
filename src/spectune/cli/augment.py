"""``spectune augment``: a teacher writes new training examples from seed examples."""

from __future__ import annotations

import argparse

HELP = (
    "have a teacher write new training examples from seed examples into a Dolly .jsonl "
    "that spectune tune reads (de-duplicated, settings in <out>.json)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        help="the Dolly .jsonl file to write (its "
        "settings go to <out>.json); an existing file is refused",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out and <out>.json when spectune augment wrote them "
        "(unchanged since); never the seeds or a file of yours",
    )
    parser.add_argument(
        "--seeds",
        default="tasks",
        help="seed examples: 'tasks' (the bundled task set's training split) or "
        "a Dolly .jsonl / Alpaca .json file (default tasks)",
    )
    parser.add_argument(
        "--n-seeds",
        type=int,
        default=64,
        help="with --seeds tasks: seed examples generated (default 64)",
    )
    parser.add_argument("-n", "--n", type=int, default=32, help="new examples wanted (default 32)")
    parser.add_argument(
        "--teacher",
        default="context",
        help="'context' (the model itself), a model sharing the model's tokenizer (a folder, "
        ".gguf file or hub id), or a spectune run folder (default context)",
    )
    parser.add_argument(
        "--model",
        default="default",
        help="the student's model: 'default' (embedded), a folder, a .gguf file or a hub id",
    )
    parser.add_argument("--context", help="the teacher's system prompt when it answers")
    parser.add_argument("--shots", type=int, default=3, help="seed examples shown per new one")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help="sampling temperature of new instructions (default 0.8)",
    )
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (0.95)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=48,
        help="longest new instruction in tokens (default 48)",
    )
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=32,
        help="longest teacher answer in tokens (default 32)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per batch (8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of shots and sampling (0)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from spectune._io import check_writable_file
    from spectune.data.augment import augment, check_output, check_settings, write_augmented
    from spectune.tuning.objectives.distill.teacher import open_teacher

    out = check_writable_file(args.out, "--out")  # before any work
    inputs = () if args.seeds == "tasks" else (args.seeds,)
    check_output(out, overwrite=args.overwrite, inputs=inputs)
    if args.seeds == "tasks":
        from spectune.data.tasks import generate_task_set
        from spectune.errors import SpectuneError

        if args.n_seeds < 1:
            raise SpectuneError(
                f"--n-seeds must be >= 1 (seed examples generated from the task "
                f"set), got {args.n_seeds}"
            )
        seeds, _ = generate_task_set(args.n_seeds, 0, seed=args.seed)
        name = f"spectune task set (seed {args.seed}, {args.n_seeds} examples)"
    else:
        from spectune.data.instructions import load_instructions

        seeds, name = load_instructions(args.seeds), args.seeds
    settings = {
        "shots": args.shots,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "answer_tokens": args.answer_tokens,
        "batch_size": args.batch_size,
    }
    check_settings(seeds, args.n, **settings)  # before the teacher is loaded
    teacher = open_teacher(
        args.teacher, args.model, context=args.context, progress=not args.no_progress
    )
    examples, info = augment(
        seeds,
        args.n,
        teacher,
        context=args.context,
        seed=args.seed,
        seeds_name=name,
        progress=not args.no_progress,
        **settings,
    )
    sidecar = write_augmented(out, examples, info, overwrite=args.overwrite, inputs=inputs)
    print(
        f"wrote {info.n_written} of {info.n_requested} examples to {out} in {info.seconds:.1f} s "
        f"({info.n_attempts} attempts, {info.n_duplicates} duplicates, {info.n_empty} empty); "
        f"settings in {sidecar}"
    )
    for ex in examples[:3]:
        print(f"  {ex.instruction!r} -> {ex.response!r}")
    print(f"train on it: spectune tune configs/lora.yaml data.train={out}")
    return 0
