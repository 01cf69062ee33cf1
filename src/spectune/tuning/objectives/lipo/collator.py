"""Tokenized lists (one feature per list: K responses with their prompt) and the collator that
batches them, with each list's prompt apart (left-padded) when its responses share it."""

from __future__ import annotations

from typing import Any

import torch

from spectune.data.examples import InstructionExample
from spectune.data.instructions import tokenize_example
from spectune.errors import SpectuneError
from spectune.judging.ranking import list_labels
from spectune.models.tokenizer import IGNORE_INDEX
from spectune.tuning.objectives.lipo.data import RankedList


def tokenize_lists(
    lists: list[RankedList], tokenizer: Any, *, max_length: int, system: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One feature per list: ``input_ids`` / ``labels`` (K token lists), ``scores`` (K): the
    list's labels, its scores rescaled to [0, K - 1] (:func:`list_labels`, after dropping).

    Responses longer than ``max_length`` are cut at the right; a response left without a
    labelled token is dropped, and a list left with fewer than two responses or all-equal
    scores is dropped (all counted).
    """
    feats = []
    n_seq = n_trunc = n_resp_dropped = n_list_dropped = longest = n_tokens = 0
    for lst in lists:
        ids_k, lab_k, scores = [], [], []
        for response, score in zip(lst.responses, lst.scores, strict=True):
            n_seq += 1
            ids, labels = tokenize_example(
                tokenizer, InstructionExample(lst.prompt, response), system=system
            )
            longest = max(longest, len(ids))
            if len(ids) > max_length:
                n_trunc += 1
                ids, labels = ids[:max_length], labels[:max_length]
            if not any(lab != IGNORE_INDEX for lab in labels[1:]):
                n_resp_dropped += 1
                continue
            ids_k.append(ids)
            lab_k.append(labels)
            scores.append(float(score))
        if len(scores) < 2 or len(set(scores)) < 2:
            n_list_dropped += 1
            continue
        n_tokens += sum(len(i) for i in ids_k)
        feats.append({"input_ids": ids_k, "labels": lab_k, "scores": list_labels(scores)})
    info = {
        "n_lists": len(lists),
        "n_kept": len(feats),
        "n_sequences": n_seq,
        "n_truncated": n_trunc,
        "n_responses_dropped": n_resp_dropped,
        "n_dropped": n_list_dropped,
        "n_tokens": n_tokens,
        "max_length": int(max_length),
        "longest": longest,
    }
    return feats, info


class ListCollator:
    """Batch tokenized lists: every response of every list as one row (right padding), plus
    ``scores`` / ``ref_logps`` / ``list_mask`` of shape (lists, K_max) (K_max: the longest
    list of the batch; rows are the lists' responses in order, list by list)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise SpectuneError("cannot collate an empty batch of lists")
        seqs = [
            {"input_ids": ids, "labels": lab}
            for f in features
            for ids, lab in zip(f["input_ids"], f["labels"], strict=True)
        ]
        batch = _batch(seqs, self.pad_token_id)
        k_max = max(len(f["scores"]) for f in features)
        scores = torch.zeros(len(features), k_max)
        ref = torch.zeros(len(features), k_max)
        mask = torch.zeros(len(features), k_max, dtype=torch.bool)
        for b, f in enumerate(features):
            k = len(f["scores"])
            scores[b, :k] = torch.as_tensor(f["scores"], dtype=torch.float32)
            ref[b, :k] = torch.as_tensor(f.get("ref_logps", [0.0] * k), dtype=torch.float32)
            mask[b, :k] = True
        out = {**batch, "scores": scores, "ref_logps": ref, "list_mask": mask}
        n_prompt = [_prompt_length(f) for f in features]
        if all(n is not None for n in n_prompt):
            out.update(self._shared(features, n_prompt))
        return out

    def _shared(self, features: list[dict[str, Any]], n_prompt: list[int]) -> dict[str, Any]:
        """The prompts (left-padded) and answers (right-padded) apart, for
        :func:`shared_prompt_logps`."""
        prompts = [f["input_ids"][0][:n] for f, n in zip(features, n_prompt, strict=True)]
        width = max(len(p) for p in prompts)
        p_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        p_mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for b, p in enumerate(prompts):
            p_ids[b, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
            p_mask[b, width - len(p) :] = 1
        answers, labels, index = [], [], []
        for b, (f, n) in enumerate(zip(features, n_prompt, strict=True)):
            for ids, lab in zip(f["input_ids"], f["labels"], strict=True):
                answers.append(ids[n:])
                labels.append(lab[n:])
                index.append(b)
        return {
            "prompt_ids": p_ids,
            "prompt_mask": p_mask,
            "answer_ids": _pad(answers, self.pad_token_id),
            "answer_mask": _pad([[1] * len(a) for a in answers], 0),
            "answer_labels": _pad(labels, IGNORE_INDEX),
            "list_index": torch.as_tensor(index, dtype=torch.long),
        }


def _prompt_length(feature: dict[str, Any]) -> int | None:
    """Length of the prompt every response of a tokenized list starts with (the tokens before
    the first label); None when they do not share one."""
    lengths = {next(i for i, x in enumerate(lab) if x != IGNORE_INDEX) for lab in feature["labels"]}
    if len(lengths) != 1:
        return None
    n = lengths.pop()
    first = feature["input_ids"][0][:n]
    if n < 1 or any(ids[:n] != first for ids in feature["input_ids"]):
        return None
    return n


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    length = max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def _batch(seqs: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": _pad([s["input_ids"] for s in seqs], pad_id),
        "attention_mask": _pad([[1] * len(s["input_ids"]) for s in seqs], 0),
        "labels": _pad([s["labels"] for s in seqs], IGNORE_INDEX),
    }
