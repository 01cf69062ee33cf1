"""The LiPO objective (:class:`LiPO`): its data, the reference log-probs computed once before
training, the memory check, the loss of a batch and the judged ranking metrics; registered
as ``lipo``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import AutoConfig

from spectune.data.examples import InstructionExample
from spectune.data.instructions import split_heldout, tokenize_example
from spectune.data.tasks import TASKS_VERSION, generate_task_set
from spectune.errors import SpectuneError
from spectune.judging.ranking import pair_accuracy, ranking_metrics
from spectune.models import hardware
from spectune.models.loading import resolve_model_dir
from spectune.models.tokenizer import IGNORE_INDEX, pad_token_id
from spectune.tuning.methods.base import load_float_base, resolve_model_dtype
from spectune.tuning.objectives import register_objective
from spectune.tuning.objectives.base import JudgeContext, Objective, RunData, TrainData
from spectune.tuning.objectives.lipo.collator import ListCollator, tokenize_lists
from spectune.tuning.objectives.lipo.data import (
    ListStats,
    cut_lists,
    load_lists,
    make_lists,
)
from spectune.tuning.objectives.lipo.logps import list_logps, score_features
from spectune.tuning.objectives.lipo.loss import lipo_loss
from spectune.tuning.objectives.lipo.sampling import sample_lists
from spectune.tuning.objectives.lipo.section import LipoSection
from spectune.tuning.scale.memory import available_bytes, batch_activation_bytes

if TYPE_CHECKING:
    from spectune.tuning.config import TuneConfig


def _batch_shape(train: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(longest list K, longest sequence, most labelled tokens of a list) of tokenized lists."""
    k = max(len(f["scores"]) for f in train)
    t = max(len(ids) for f in train for ids in f["input_ids"])
    n_lab = max(sum(sum(1 for x in lab[1:] if x != -100) for lab in f["labels"]) for f in train)
    return k, t, n_lab


@dataclass
class LipoState:
    """What :meth:`LiPO.prepare` makes once per run: the tokenized training and held-out lists
    with the reference log-probs, and how they were made."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    info: dict[str, Any]
    section: LipoSection = field(default_factory=LipoSection)
    validation: list[dict[str, Any]] = field(default_factory=list)


class LiPO(Objective):
    description = "listwise preference optimization (LiPO-lambda; DPO and softmax baselines)"
    sections = {"lipo": LipoSection}

    def check(self, config: TuneConfig) -> None:
        sec = config.section("lipo")
        if sec.lists == "on_policy" and config.data.train != "tasks":
            raise SpectuneError(
                "lipo.lists: on_policy grades sampled answers with the task checker, so it needs "
                "data.train: tasks; with a lists file use lipo.lists: generated (the default)"
            )

    # -- data ------------------------------------------------------------------------------

    def load_data(self, config: TuneConfig) -> RunData:
        sec, d = config.section("lipo"), config.data
        if d.train == "tasks":
            train_ex, heldout = generate_task_set(d.n_train, d.n_eval, seed=config.seed)
            held_lists, held_stats = make_lists(
                heldout, sec.eval_list_size, seed=f"{config.seed}:heldout"
            )
            if sec.lists == "on_policy":
                train, stats = list(train_ex), None  # sampled in prepare()
            else:
                train, stats = make_lists(train_ex, sec.list_size, seed=config.seed)
            info = {
                "source": "spectune task set",
                "version": TASKS_VERSION,
                "seed": config.seed,
                "lists": sec.lists,
                "list_size": sec.list_size,
                "eval_list_size": sec.eval_list_size,
                "n_train": len(train),
                "n_eval": len(heldout),
                "heldout_lists": held_stats.to_dict(),
            }
            if stats is not None:
                info["train_lists"] = stats.to_dict()
            return RunData(train, heldout, info, extra={"heldout_lists": held_lists})
        train, stats = load_lists(d.train, None, seed=config.seed)
        if d.eval is not None:
            held_lists, held_stats = load_lists(d.eval, sec.eval_list_size, seed=config.seed)
            split = f"file {d.eval}"
        else:
            if len(train) < 2:
                raise SpectuneError(
                    f"lists file {d.train} holds {len(train)} usable list; a "
                    "held-out split needs at least 2 (or give data.eval)"
                )
            train, held_lists = split_heldout(train, d.eval_fraction, config.seed)
            n_hold = len(held_lists)
            held_stats = ListStats(n_read=n_hold)
            held_lists = cut_lists(
                held_lists, sec.eval_list_size, seed=config.seed, stats=held_stats
            )
            split = f"{n_hold} of the file's lists (eval_fraction {d.eval_fraction}, seeded)"
        train = cut_lists(train, sec.list_size, seed=config.seed, stats=stats)
        if not train:
            raise SpectuneError(
                f"lists file {d.train}: no training list keeps two different "
                f"scores when cut to lipo.list_size={sec.list_size}"
            )
        held_lists = held_lists[: d.n_eval]
        heldout = [
            InstructionExample(lst.prompt, lst.best(), category=lst.category) for lst in held_lists
        ]
        info = {
            "source": d.train,
            "heldout": split,
            "list_size": sec.list_size,
            "eval_list_size": sec.eval_list_size,
            "n_train": len(train),
            "n_eval": len(heldout),
            "train_lists": stats.to_dict(),
        }
        info["heldout_lists"] = held_stats.to_dict()
        return RunData(train, heldout, info, extra={"heldout_lists": held_lists})

    # -- per-run state ---------------------------------------------------------------------

    def prepare(self, ctx: JudgeContext) -> LipoState:
        """Build on-policy lists (if asked), tokenize, and compute the reference log-probs of
        every training, validation and held-out response with the base model, once."""
        config, sec = ctx.config, ctx.config.section("lipo")
        # the base as the method loads it (model_dtype, attention kernel): rewards start at 0
        dtype, _ = resolve_model_dtype(config.model_dtype)
        base = load_float_base(ctx.model_dir, dtype, attn_implementation=config.attn_implementation)
        base = hardware.to_compute_device(base)
        info: dict[str, Any] = {}
        train_lists, val_lists = ctx.data.train, ctx.data.validation
        if sec.lists == "on_policy" and config.data.train == "tasks":
            train_lists, stats = sample_lists(
                base,
                ctx.tokenizer,
                ctx.data.train,
                sec,
                system=config.data.system,
                seed=config.seed,
                progress=ctx.progress,
            )
            info["on_policy_lists"] = stats.to_dict()
            if val_lists:
                val_lists, _ = sample_lists(
                    base,
                    ctx.tokenizer,
                    val_lists,
                    sec,
                    system=config.data.system,
                    seed=config.seed + 1,
                    progress=ctx.progress,
                )
        kw = {"max_length": config.data.max_length, "system": config.data.system}
        train, tinfo = tokenize_lists(train_lists, ctx.tokenizer, **kw)
        heldout, hinfo = tokenize_lists(ctx.data.extra["heldout_lists"], ctx.tokenizer, **kw)
        validation, _ = tokenize_lists(val_lists, ctx.tokenizer, **kw) if val_lists else ([], {})
        if val_lists and not validation:
            raise SpectuneError(
                f"lipo: no validation list left after tokenization at data.max_length="
                f"{config.data.max_length}; raise data.max_length or data.n_validation"
            )
        if not train:
            raise SpectuneError(
                f"lipo: no training list left after tokenization ({tinfo['n_dropped']} of "
                f"{tinfo['n_lists']} lost their pairs at data.max_length="
                f"{config.data.max_length}); raise data.max_length"
            )
        if not (isinstance(ctx.data.extra, dict) and ctx.data.extra.get("memory_checked")):
            self._check_memory(config, base.config, *_batch_shape(train))
        pad = pad_token_id(ctx.tokenizer)
        kw2 = {
            "batch_size": sec.batch_size,
            "progress": ctx.progress,
            "share_prompt": sec.share_prompt,
        }
        for feats, desc in (
            (train, "reference log-probs (train)"),
            (validation, "reference log-probs (validation)"),
            (heldout, "reference log-probs (held-out)"),
        ):
            if not feats:
                continue
            for f, ref in zip(
                feats, score_features(base, feats, pad, desc=desc, **kw2), strict=True
            ):
                f["ref_logps"] = ref
        del base
        info.update(
            tokenize={**tinfo, "heldout": hinfo},
            reference=f"base model ({dtype}), log-probs precomputed once before training",
        )
        return LipoState(train, heldout, info, sec, validation)

    def check_data(
        self, config: TuneConfig, data: RunData, tokenizer: Any, model_dir: Path
    ) -> None:
        """Before the results folder exists: the training lists survive tokenization and a
        training batch fits ``lipo.memory_gb`` (or the available memory). On-policy lists
        are checked at their largest: K - 1 answers of ``lipo.max_new_tokens`` tokens."""
        sec, d = config.section("lipo"), config.data
        kw = {"max_length": d.max_length, "system": d.system}
        if sec.lists == "on_policy" and d.train == "tasks":
            k, t, n_lab = sec.list_size, 0, 0
            for ex in data.train:
                ids, labels = tokenize_example(
                    tokenizer, InstructionExample(ex.instruction, ex.response), system=d.system
                )
                lab = sum(1 for x in labels[1:] if x != IGNORE_INDEX) + sec.max_new_tokens
                t = max(t, min(d.max_length, len(ids) + sec.max_new_tokens))
                n_lab = max(n_lab, k * min(lab, d.max_length))
        else:
            train, tinfo = tokenize_lists(data.train, tokenizer, **kw)
            if not train:
                raise SpectuneError(
                    f"lipo: no training list left after tokenization ({tinfo['n_dropped']} of "
                    f"{tinfo['n_lists']} lost their pairs at data.max_length={d.max_length}); "
                    "raise data.max_length"
                )
            k, t, n_lab = _batch_shape(train)
        self._check_memory(config, AutoConfig.from_pretrained(model_dir), k, t, n_lab)
        if isinstance(data.extra, dict):
            data.extra["memory_checked"] = True

    def _check_memory(
        self, config: TuneConfig, model_config: Any, k: int, t: int, n_lab: int
    ) -> None:
        """Refuse a training batch of lists of ``k`` responses of up to ``t`` tokens (``n_lab``
        labelled tokens per list) bigger than ``lipo.memory_gb`` or the available memory."""
        sec = config.section("lipo")
        args = config.training_arguments()
        b = int(args["per_device_train_batch_size"])
        need = batch_activation_bytes(
            model_config,
            b * k,
            t,
            b * n_lab,
            checkpointing=config.checkpointing(),
            dtype=resolve_model_dtype(config.model_dtype)[0],
            attn=config.attn_implementation,
        )
        limit = sec.memory_gb * 1e9 if sec.memory_gb is not None else available_bytes()
        if limit is not None and need > limit:
            where = "lipo.memory_gb" if sec.memory_gb is not None else "available memory"
            raise SpectuneError(
                f"lipo: a training batch of {b} list(s) x {k} responses x {t} tokens needs about "
                f"{need / 1e9:.1f} GB of activations, more than the {limit / 1e9:.1f} GB allowed "
                f"({where}); lower train.per_device_train_batch_size (raise "
                "train.gradient_accumulation_steps to keep the batch), lipo.list_size or "
                "data.max_length, or set train.gradient_checkpointing: true"
            )

    def _state(
        self, config: TuneConfig, data: RunData, tokenizer: Any, ctx: JudgeContext | None
    ) -> LipoState:
        if ctx is not None and isinstance(ctx.state, LipoState):
            return ctx.state
        model_dir = ctx.model_dir if ctx is not None else resolve_model_dir(config.model)
        return self.prepare(JudgeContext(config, tokenizer, data, model_dir))

    def features(
        self, config: TuneConfig, data: RunData, tokenizer: Any, ctx: JudgeContext | None = None
    ) -> TrainData:
        state = self._state(config, data, tokenizer, ctx)
        info = {
            **state.info["tokenize"],
            **{k: v for k, v in state.info.items() if k != "tokenize"},
        }
        return TrainData(state.train, ListCollator(pad_token_id(tokenizer)), info)

    def validation_features(
        self, config: TuneConfig, data: RunData, tokenizer: Any, ctx: JudgeContext | None = None
    ) -> TrainData:
        """The validation lists, tokenized with their reference log-probs in ``prepare``."""
        state = self._state(config, data, tokenizer, ctx)
        return TrainData(
            state.validation,
            ListCollator(pad_token_id(tokenizer)),
            {"n_lists": len(state.validation)},
        )

    # -- loss ------------------------------------------------------------------------------

    def compute_loss(
        self,
        trainer: Any,
        model: Any,
        inputs: dict[str, Any],
        *,
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """The list loss of the batch (``lipo.loss``) on the implicit rewards."""
        sec = _section_of(trainer)
        logps = list_logps(model, inputs, share_prompt=sec.share_prompt)
        mask = inputs["list_mask"]
        policy = logps.new_zeros(mask.shape)
        policy = policy.masked_scatter(mask, logps)  # rows are the lists' responses in order
        rewards = sec.beta * (policy - inputs["ref_logps"].to(policy.dtype))
        loss = lipo_loss(rewards, inputs["scores"], mask, loss=sec.loss)
        if num_items_in_batch is not None and getattr(trainer, "model_accepts_loss_kwargs", False):
            # the Trainer then takes the loss as already divided over gradient accumulation
            loss = loss / max(1, int(getattr(trainer, "current_gradient_accumulation_steps", 1)))
        return (loss, {"rewards": rewards.detach()}) if return_outputs else loss

    # -- judging ---------------------------------------------------------------------------

    def judge(self, ctx: JudgeContext, model: Any, phase: str) -> dict[str, Any]:
        """Ranking quality of held-out lists (see the module docstring): before training the
        policy is the reference (its log-probs are reused, implicit rewards all 0)."""
        state = self._state(ctx.config, ctx.data, ctx.tokenizer, ctx)
        sec = ctx.config.section("lipo")
        feats = state.heldout
        if not feats:
            return {}
        refs = [f["ref_logps"] for f in feats]
        if phase == "before":
            policy = refs
        else:
            policy = score_features(
                model(),
                feats,
                pad_token_id(ctx.tokenizer),
                batch_size=sec.batch_size,
                progress=ctx.progress,
                desc="held-out list log-probs",
                share_prompt=sec.share_prompt,
            )
        labels = [f["scores"] for f in feats]
        rewards = [
            [sec.beta * (p - r) for p, r in zip(ps, rs, strict=True)]
            for ps, rs in zip(policy, refs, strict=True)
        ]
        out = {
            **ranking_metrics(rewards, labels, "reward"),
            **ranking_metrics(policy, labels, "logp"),
        }
        out["n_lists"] = len(feats)
        out["n_pairs"] = sum(pair_accuracy([0.0] * len(lab), lab)[1] for lab in labels)
        return out


def _section_of(trainer: Any) -> LipoSection:
    """The ``lipo:`` section of the run a Trainer trains (through its objective state)."""
    state = getattr(trainer, "objective_state", None)
    sec = getattr(state, "section", None)
    if sec is None:
        raise SpectuneError("lipo: the Trainer has no LiPO state; run it through the recipe")
    return sec


register_objective("lipo", LiPO())
