"""Judging: how good a model is, measured without test data of the user's.

One module per metric, each a function of ``(model, tokenizer, ...)`` that returns a dataclass
with a ``to_dict()`` that serializes to JSON:

- :mod:`.accuracy`: learning, held-out exact-match accuracy (:func:`~.accuracy.exact_match`,
  :class:`~.accuracy.AccuracyResult`), with the answers that reached the length limit without
  the end-of-turn marker counted, and a warning when they are most of them;
- :mod:`.loss`: learning, the held-out loss of the reference answers
  (:func:`~.loss.heldout_loss`, :class:`~.loss.LossResult`);
- :mod:`.forgetting`: perplexity on a fixed slice of general text, ``pydoc_data.topics``
  (:func:`~.forgetting.general_text`, :func:`~.forgetting.perplexity`,
  :class:`~.forgetting.PerplexityResult`), and forgetting as peft's method comparison
  defines it: mean token cross-entropy on fixed general-text documents
  (:func:`~.forgetting.general_ce`, :class:`~.forgetting.CrossEntropyResult`);
- :mod:`.harness`: lm-evaluation-harness tasks on the model in memory, spectune's own task
  files for its task set among them (:func:`~.harness.evaluate_harness`,
  :class:`~.harness.HarnessResult`);
- :mod:`.latency`: milliseconds per generated token, greedy, batch 1
  (:func:`~.latency.generation_latency`, :class:`~.latency.LatencyResult`);
- :mod:`.ranking`: how a model's scores order graded responses (pair accuracy, NDCG; LiPO's
  held-out lists);
- :mod:`.all`: :func:`~.all.judge`, a model judged on all of them, as one JSON-ready dict;
- :mod:`.cache`: a base model's judgment kept on disk (``$SPECTUNE_CACHE/judge``), keyed by
  the model's files, the held-out data, the settings, the chat template, dtype and Python
  version.

The model may be a plain Hugging Face causal LM, a ``peft`` model or a model whose linear
layers were replaced by custom modules: only its forward (``input_ids``, ``attention_mask``,
``position_ids``, the KV cache) and its ``.logits`` / ``.past_key_values`` are used. Each
function switches the model to eval mode, computes without gradients and restores the mode on
return (:func:`spectune.models.forward.eval_mode`); torch is imported when a function runs,
so the result types load without it (:mod:`spectune.results` and the report read them). Read the warning in
:mod:`spectune.models.quant` about bitsandbytes 4-bit models before judging a QLoRA model.
A new metric is a module here with its result dataclass, called by :func:`~.all.judge` and
typed in :class:`spectune.results.metrics.Judging`.
"""
