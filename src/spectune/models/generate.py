"""Generation in one place: greedy decoding and sampling of token-id prompts in left-padded
batches with a KV cache.

Greedy (:func:`greedy_batch`, :func:`greedy_generate`) serves judging (answers, latency) and
distillation's teacher answers and on-policy inputs; sampling (:func:`sample_batch` with a
:class:`Sampling`: temperature, top-k, top-p) serves LiPO's on-policy lists and augment's new
instructions. Both run the same decoding loop and differ only in how the next token is picked; both stop a
row with the same :class:`StopCriteria` (:func:`stop_criteria` of a tokenizer: its end-of-turn
marker, one token or several, and its EOS).
A sample draws from torch's global random stream (``torch.manual_seed``), with the draws of
Hugging Face's ``generate(do_sample=True)`` for the same settings: temperature, then top-k, then
top-p on the float32 logits, one ``torch.multinomial`` draw per row and step, finished rows fed
the pad token.

The model may be a plain Hugging Face causal LM, a ``peft`` model or a model whose linear layers
were replaced by custom modules: only ``model(input_ids=..., attention_mask=...,
position_ids=..., cache=... (past_key_values before transformers 5.2x), use_cache=...)`` and its
``.logits`` / ``.past_key_values`` are used.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from spectune._progress import track
from spectune.errors import SpectuneError
from spectune.models.forward import eval_mode, model_device, synchronize, unwrap_model
from spectune.models.tokenizer import end_of_turn, pad_token_id

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers causal LMs do)."""
    base = unwrap_model(model)
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def _cache_argument(model: Any) -> str:
    """The forward's name for the key/value cache: ``cache`` from transformers 5.2x on,
    ``past_key_values`` before (deprecated since, to be removed in 5.40)."""
    base = unwrap_model(model)
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def greedy_batch(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Collection[int] = (),
    stop: StopCriteria | None = None,
    ignore_stop: bool = False,
    step_times: list[float] | None = None,
) -> list[list[int]]:
    """Greedy decoding of a batch of token-id prompts with left padding and a KV cache.

    Position ids are counted from each row's first real token, so a left-padded row gets the
    same positions as it would alone. A model that returns no ``past_key_values`` is fed the
    whole sequence at every step instead.

    Args:
        stop_ids: single tokens that end a row (added to ``stop``).
        stop: what ends a row (:func:`stop_criteria` of the tokenizer).

    Returns:
        For each prompt the generated ids, up to and without the first stop (a marker
        matched as text: without the token it starts in).
    """
    criteria = StopCriteria.of(stop, stop_ids)
    rows = _decode(
        model,
        prompts,
        _argmax,
        max_new_tokens=max_new_tokens,
        pad_id=pad_id,
        stop=criteria,
        ignore_stop=ignore_stop,
        step_times=step_times,
    )
    return rows if ignore_stop else [criteria.tokens_before(row) for row in rows]


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)


@dataclass(frozen=True)
class Sampling:
    """How :func:`sample_batch` draws the next token from the logits of the last position.

    Attributes:
        temperature: the logits are divided by it (> 0; 1: unchanged).
        top_k: only the k highest logits are kept (ties at the k-th included); 0: all.
        top_p: only the smallest set of most probable tokens whose probability reaches
            ``top_p`` is kept (the most probable token always); 1: all.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise SpectuneError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise SpectuneError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SpectuneError(f"top_p must be in (0, 1], got {self.top_p}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of ``logits`` (rows, vocab), drawn from torch's global stream."""
        scores = logits.to(dtype=torch.float32, copy=True)
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1])).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            rising, order = torch.sort(scores, descending=False)
            # drop the least probable tokens while what they hold stays within 1 - top_p
            drop = rising.softmax(dim=-1).cumsum(dim=-1) <= 1 - self.top_p
            drop[..., -1] = False
            scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)


def sample_batch(
    model: Any,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    *,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Collection[int] = (),
    stop: StopCriteria | None = None,
    n_samples: int = 1,
    seed: int | None = None,
) -> list[list[int]]:
    """Sampled continuations of a batch of token-id prompts (left padding, KV cache, as
    :func:`greedy_batch`), in eval mode (mode restored).

    Args:
        model: a causal LM.
        prompts: token ids.
        sampling: temperature, top-k, top-p.
        max_new_tokens: longest continuation.
        pad_id: the pad id (left padding, and fed to finished rows).
        stop_ids: a row ends at the first of these (added to ``stop``).
        stop: what ends a row (:func:`stop_criteria` of the tokenizer).
        n_samples: continuations per prompt (rows ``i * n_samples`` to ``(i + 1) * n_samples
            - 1`` are prompt i's).
        seed: ``torch.manual_seed(seed)`` first; None: continue torch's global stream.

    Returns:
        ``len(prompts) * n_samples`` token lists, up to and without the first stop.
    """
    if n_samples < 1:
        raise SpectuneError(f"n_samples must be >= 1, got {n_samples}")
    if seed is not None:
        torch.manual_seed(seed)
    rows = [p for p in prompts for _ in range(n_samples)]
    criteria = StopCriteria.of(stop, stop_ids)
    with eval_mode(model):
        out = _decode(
            model, rows, sampling, max_new_tokens=max_new_tokens, pad_id=pad_id, stop=criteria
        )
    return [criteria.tokens_before(row) for row in out]


def _decode(
    model: Any,
    prompts: Sequence[Sequence[int]],
    pick: Callable[[torch.Tensor], torch.Tensor],
    *,
    max_new_tokens: int,
    pad_id: int,
    stop: StopCriteria,
    ignore_stop: bool = False,
    step_times: list[float] | None = None,
) -> list[list[int]]:
    """The decoding loop of :func:`greedy_batch` and :func:`sample_batch`: ``pick`` turns the
    last position's logits (rows, vocab) into the next ids (rows,).

    Returns:
        Each row's generated ids up to and with the step it stopped at (all of them when it
        did not stop, or with ``ignore_stop``)."""
    device = model_device(model)
    batch, length = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, length - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, length)
    keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}  # only the last
    cache_arg = _cache_argument(model)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out_tokens: list[torch.Tensor] = []
    past = None
    step_in, step_pos = ids, positions
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_in,
            attention_mask=mask,
            position_ids=step_pos,
            use_cache=True,
            **{cache_arg: past},
            **keep,
        )
        next_ids = pick(out.logits[:, -1, :])  # (batch,)
        next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
        out_tokens.append(next_ids)
        if step_times is not None:
            synchronize(next_ids.device)
            step_times.append(time.perf_counter())
        if not ignore_stop and stop:
            done = done | stop(torch.stack(out_tokens[-stop.window :], dim=1))
            if bool(done.all()):
                break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        new_pos = positions[:, -1:] + 1
        positions = torch.cat([positions, new_pos], dim=1)
        past = getattr(out, "cache", None)
        if past is None:
            past = getattr(out, "past_key_values", None)
        if past is None:  # no cache: feed the whole sequence again
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            step_in, step_pos = ids, positions
        else:
            step_in, step_pos = next_ids[:, None], new_pos
    generated = torch.stack(out_tokens, dim=1).tolist() if out_tokens else [[]] * batch
    if ignore_stop:
        return generated
    return [row[: end[1]] if (end := stop.end(row)) else row for row in generated]


class StopCriteria:
    """When a generated row has finished: at a token of ``ids``, at a run of tokens equal to
    one of ``sequences``, or (``text``) once its decoded text holds a marker spanning several
    tokens, however the tokens split it.

    Args:
        ids: single stop tokens (EOS, a one-token end-of-turn marker).
        sequences: stop runs of tokens (a marker's tokens, tokenized alone).
        text: a stop text, matched in ``decode(ids)``; needs ``decode``.
        decode: ``decode(ids) -> str`` (the tokenizer's, special tokens kept).
    """

    def __init__(
        self,
        ids: Collection[int] = (),
        sequences: Collection[Sequence[int]] = (),
        text: str | None = None,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        if text and decode is None:
            raise SpectuneError("StopCriteria: a stop text needs a decode function")
        self.ids = frozenset(int(i) for i in ids)
        self.sequences = tuple(tuple(int(i) for i in s) for s in sequences if len(s))
        self.text = text or None
        self.decode = decode
        longest = max((len(s) for s in self.sequences), default=1)
        #: tokens a check looks back at: a marker of n UTF-8 bytes lies in its last n tokens
        self.window = max(longest, len(self.text.encode()) if self.text else 1)

    @classmethod
    def of(cls, stop: StopCriteria | None, ids: Collection[int] = ()) -> StopCriteria:
        """``stop`` with the single tokens ``ids`` added."""
        if stop is None:
            return cls(ids)
        if not ids:
            return stop
        return cls(stop.ids | set(ids), stop.sequences, stop.text, stop.decode)

    def __bool__(self) -> bool:
        return bool(self.ids or self.sequences or self.text)

    def __call__(self, tail: torch.Tensor) -> torch.Tensor:
        """Which rows stop at their last token, from their last ``window`` generated ids
        (rows, <= window) -> (rows,) bool."""
        rows, n = tail.shape
        hit = torch.zeros(rows, dtype=torch.bool, device=tail.device)
        if self.ids:
            stop = torch.tensor(sorted(self.ids), dtype=tail.dtype, device=tail.device)
            hit |= torch.isin(tail[:, -1], stop)
        for seq in self.sequences:
            if len(seq) <= n:
                want = torch.tensor(seq, dtype=tail.dtype, device=tail.device)
                hit |= (tail[:, n - len(seq) :] == want).all(dim=1)
        if self.text:
            for r, row in enumerate(tail.tolist()):
                hit[r] |= self.text in self.decode(row)  # type: ignore[misc]
        return hit

    def end(self, row: Sequence[int]) -> tuple[int, int] | None:
        """Where a row's first stop is: (the index of its first token, the index after its
        last); None: the row never stops. A stop text that starts inside a token starts at
        that token."""
        row = list(row)
        for k in range(1, len(row) + 1):
            if row[k - 1] in self.ids:
                return k - 1, k
            for seq in self.sequences:
                if k >= len(seq) and tuple(row[k - len(seq) : k]) == seq:
                    return k - len(seq), k
            if self.text and self.text in self.decode(row[max(0, k - self.window) : k]):  # type: ignore[misc]
                start = k - 1  # back to the token the marker starts in
                while start > 0 and self.text not in self.decode(row[start:k]):  # type: ignore[misc]
                    start -= 1
                return start, k
        return None

    def tokens_before(self, row: Sequence[int]) -> list[int]:
        """The row up to and without its first stop (all of it when it never stops)."""
        end = self.end(row)
        return list(row) if end is None else list(row[: end[0]])

    def answer(self, row: Sequence[int], decode: Callable[[list[int]], str]) -> str:
        """The row's text up to its first stop: a stop text is cut exactly where it starts
        (even inside a token), a stop token or run is left out. ``decode`` skips special
        tokens."""
        end = self.end(row)
        if end is None:
            return decode(list(row))
        text = decode(list(row[: end[1]]))
        if self.text and self.text in text:
            return text[: text.index(self.text)]
        return decode(list(row[: end[0]]))


def stop_criteria(tokenizer: PreTrainedTokenizerBase) -> StopCriteria:
    """Where a row generated with this tokenizer ends: its EOS token and its end-of-turn
    marker, as its token (one) or its run of tokens (several), and as text, however the model
    spells it (a one-token marker written out in pieces too)."""
    eot = end_of_turn(tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    ids = set() if eos is None else {int(eos)}
    if eot is None:
        return StopCriteria(ids)
    if eot.token_id is not None:
        ids.add(eot.token_id)
    return StopCriteria(
        ids,
        [eot.ids] if eot.token_id is None else [],
        eot.marker or None,
        lambda row: tokenizer.decode(row, skip_special_tokens=False),
    )


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The single stop tokens of :func:`stop_criteria` (a marker matched as text: only EOS)."""
    return set(stop_criteria(tokenizer).ids)


def greedy_generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to chat-template prompts, batched (left padding), stopping at end of turn.

    Prompts are sorted by length before batching (less padding) and the answers returned in
    the order given.

    Args:
        model: a causal LM (plain, peft, or with custom linear layers); see the module warning
            about 4-bit models.
        tokenizer: its tokenizer.
        prompts: rendered prompts (e.g. from :func:`spectune.data.instructions.build_prompt`);
            tokenized without adding special tokens.
        max_new_tokens: longest answer generated.
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Returns:
        The decoded answers (special tokens skipped, cut before the end-of-turn marker,
        whitespace stripped); :func:`generate_answers` also says which ones ended.
    """
    return generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    ).texts


@dataclass
class Answers:
    """Greedy answers, and which of them ended at a stop (the end-of-turn marker or EOS)
    rather than at the ``max_new_tokens`` limit."""

    texts: list[str]
    ended: list[bool]


def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
    progress: bool = False,
) -> Answers:
    """:func:`greedy_generate`'s answers, with whether each one ended at a stop."""
    if max_new_tokens < 1:
        raise SpectuneError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise SpectuneError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[str] = [""] * len(encoded)
    ended = [False] * len(encoded)
    pad_id, stop = pad_token_id(tokenizer), stop_criteria(tokenizer)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    starts = range(0, len(order), batch_size)
    with eval_mode(model):
        for start in track(starts, len(starts), "generate", enabled=progress, unit="batch"):
            chunk = order[start : start + batch_size]
            rows = _decode(
                model,
                [encoded[i] for i in chunk],
                _argmax,
                max_new_tokens=max_new_tokens,
                pad_id=pad_id,
                stop=stop,
            )
            for i, row in zip(chunk, rows, strict=True):
                answers[i] = stop.answer(row, decode).strip()
                ended[i] = stop.end(row) is not None
    return Answers(answers, ended)
