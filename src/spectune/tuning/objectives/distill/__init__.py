"""Knowledge distillation into the student (``objective: distill``).

The student (the run's model, built by the run's method: LoRA, FROG, full...) learns the
teacher's next-token distributions on the response tokens of the training examples.

Teacher (``distill.teacher``):

* ``context``: the student's own base model given extra context in its prompt: a system
  prompt (``distill.context``) and/or ``distill.shots`` solved training examples as earlier
  chat turns. The student sees the plain prompt and must learn to behave as if the context
  were there (context distillation). Works on the embedded model with nothing else.
* a local Hugging Face model folder that shares the student's tokenizer and vocabulary;
* a spectune run folder (``config.yaml`` + ``adapter/``, or ``merged/``): the run's base
  model with its adapter, loaded by the run's own method (a full fine-tune distilled into a
  LoRA adapter, for example).

A teacher whose tokenizer or vocabulary size differs from the student's is refused in
:meth:`Distill.load_data`, which the recipe calls before the results folder is touched. The
teacher is a separate model in eval mode with ``requires_grad=False`` on every parameter: it
gets no gradient and no optimizer state (it is not a submodule of the trained model).

Loss (per labelled response token t, with p = teacher, q = student, both softmax(logits / T)):

======================  ================================================================
``loss: forward_kl``    KL(p || q) = sum_v p_v (log p_v - log q_v)          (beta = 0)
``loss: reverse_kl``    KL(q || p)                                          (beta = 1)
``loss: jsd``           beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
======================  ================================================================

the generalized Jensen-Shannon divergence of Agarwal et al. 2024 (GKD), with TRL's
convention for ``beta``: 0 is forward KL, 1 is reverse KL. The token divergences are averaged
over the batch's labelled tokens; ``sft_weight`` w mixes in the plain NLL of the reference
tokens: ``(1 - w) * divergence + w * NLL``. As in TRL, logits are divided by the temperature
and the divergence is not rescaled by T^2.

Why not TRL's trainer: ``trl.experimental.gkd.GKDTrainer`` / ``trl.DistillationTrainer`` are
``Trainer`` subclasses with their own data pipeline (chat "messages" datasets, their own
collator, generation settings) and compute the vocabulary projection at every position. A
spectune run already has its Trainer (:class:`~spectune.tuning.trainer.SpectuneTrainer`:
the method's checkpoints, the loss log, the gradient check), so distillation is only a loss
here: it applies the output heads of both models only at the labelled positions (about 4 of
40 tokens of a task-set example; the head is a fifth of SmolLM2's FLOPs), and the teacher may
see a different prompt from the student (context distillation), which TRL's trainers do not
support. TRL's ``generalized_jsd_loss`` is the reference the tests check our
:func:`generalized_jsd` against (and ``torch.distributions.kl_divergence``).

Options:

* ``responses: reference`` trains on the data's responses (token-level distillation);
  ``responses: teacher`` replaces them with the teacher's own greedy answers, made once before
  training (sequence-level distillation, Kim & Rush 2016).
* ``on_policy`` f > 0: at a seeded fraction f of the training steps the student answers the
  batch's prompts itself (greedy, up to ``max_new_tokens``) and the loss is taken on its own
  tokens, the teacher scoring them after its own prompt (on-policy distillation, GKD's
  lambda). The ``sft_weight`` term is then the NLL of the student's own tokens.
* ``rationale_weight`` > 0 (distilling step by step, Hsieh et al. 2023): every training
  example also becomes a rationale task. Prompts carry a task prefix (``[answer]`` /
  ``[rationale]``); the rationale task is the NLL of a rationale written by the task-set
  generator (:func:`spectune.data.tasks.task_rationale`, which knows how each answer is
  reached); the loss is ``answer_loss + rationale_weight * rationale_loss``. Only the answer
  task runs at inference: the held-out prompts carry the ``[answer]`` prefix.

Judged metrics (before and after, in ``before.json`` / ``metrics.json`` ``extras``):
``teacher_kl`` (mean forward KL(teacher || student) per held-out response token, nats),
``teacher_token_agreement`` (the two argmax tokens agree), ``teacher_agreement`` (the greedy
answers of teacher and student match, normalized exact match), ``teacher_accuracy`` (the
teacher's own accuracy on the references). With ``spectra_vs_teacher`` the tuned student's
layers are compared with the teacher's (:func:`spectune.watch.compare.compare`: the change
of log spectral norm, log Frobenius norm and alpha, scale collapse flags) into
``objective_spectra``.

The package, one module per concern:

=============  ============================================================================
module         holds
=============  ============================================================================
section.py     the ``distill:`` section (:class:`DistillSection`) and the task prefixes
teacher.py     the teacher: resolved and checked against the student, loaded, its prompt
loss.py        the divergences (forward / reverse KL, generalized JSD) and a batch's loss
               with the NLL and rationale terms
data.py        training features (teacher and student rows, rationale rows), their
               collator, on-policy batches of the student's own answers
objective.py   the objective (:class:`Distill`), its judged agreement with the teacher, and
               its registration as ``distill``
=============  ============================================================================
"""
