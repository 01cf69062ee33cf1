"""LiPO: listwise preference optimization (Liu et al. 2024, "LiPO: Listwise Preference
Optimization through Learning-to-Rank"), with DPO as its two-response special case.

Data: per prompt x a list of K responses y_1..y_K with graded labels psi_i (higher is better).
``data.train: tasks`` makes the lists from the bundled task set (:func:`make_lists`: the exact
answer, verbose answers, near misses and wrong answers, each labelled by :func:`grade`, the
task checker's graded form: 3 exact, 2 correct but verbose, 1 near miss, 0 wrong);
``lipo.lists: on_policy`` instead samples K - 1 answers per prompt from the base model and
adds the exact answer (all graded by the checker). A ``.jsonl`` file gives one list per line,
``{"prompt": ..., "responses": [...], "scores": [...]}`` (:func:`load_lists`): lists with
fewer than two responses or all-equal scores are skipped and counted (an error if none
remain), a score that is not a finite number a float holds (NaN, Infinity, 1e400, a 400-digit
integer) is an error naming the file and line, and a list longer
than ``lipo.list_size`` is cut to ``list_size`` responses (:func:`cut_list`; held-out lists
to ``lipo.eval_list_size``, 4 by default whatever K training uses, so runs compare).

Losses, over the implicit rewards s_i = beta * (log pi(y_i|x) - log pi_ref(y_i|x)) (sequence
log-probabilities: the sum over the response tokens and the end-of-turn token), per list, then
averaged over the lists of a batch (``lipo.loss``):

- ``lambda`` (LiPO-lambda): L = -sum_{psi_i > psi_j} Delta_ij log sigmoid(s_i - s_j) with the
  LambdaLoss weight Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|, gain G = 2^psi - 1
  (psi: the list's scores rescaled min-max to [0, K - 1], :func:`spectune.judging.ranking.list_labels`, so scores of
  any finite scale work: Elo-like 1500/900, 0-100, 1e300; the paper's labels are bounded
  grades or win rates, and the task checker's grades 0-3 of a list of 4 stay as they are),
  discount D(tau) = log(1 + tau), tau_i the 1-based rank of s_i under the current rewards
  (descending; ties keep list order). The weights are constants of the step (no gradient
  through the ranks), and the sum over pairs is not normalized (the paper's formula).
- ``dpo``: the pairwise DPO logistic loss -log sigmoid(s_i - s_j) averaged over every pair
  with psi_i > psi_j; with K = 2 it is exactly DPO's sigmoid loss (tested against TRL).
- ``softmax``: the listwise softmax cross-entropy -sum_i w_i log softmax(s)_i with
  w = (psi - min psi) / sum(psi - min psi) (labels shifted so the worst response weighs 0).

Reference policy: the frozen base model the user starts from (float32, or the run's
``model_dtype``). Its
log-probabilities of every training and held-out response are computed **once**, before
training, with the untouched base (:meth:`LiPO.prepare`), and travel in the dataset next to
the tokens (as TRL's ``precompute_ref_log_probs``). So no reference model, no second copy of
the weights and no adapter switching exist during training, and the objective works the same
way with every registered method: LoRA and its variants, FROG (whose relevance-scaled init
need not start at the base), full fine-tuning (where a live reference would need a second
full model) and QLoRA (whose reference is the float base it was quantized from, so its
rewards at step 0 already hold what 4-bit quantization changed, as the recipe's "before"
judging does). The price is one forward pass per response before training (about a third of
a training step's work per response) and, on ``--resume``, doing it again (it is
deterministic: eval mode, no dropout). A live reference (a ``Method.reference(model)``
context that disables the adapter, zeroes FROG's deltas, or keeps a frozen copy for full
fine-tuning) would cost a second forward per response at every step, a hook in every method,
and for full fine-tuning a second model in memory; the precomputed one needs none of it.

Each list's prompt runs once per forward and its K responses continue from the prompt's KV
cache (:func:`shared_prompt_logps`; ``lipo.share_prompt``): on the task set the prompt is
most of every sequence, so a list of 4 costs about one sequence and a half, not four.

Judged (``Judging.extras``, before and after, on held-out lists made from the held-out
questions, or ``data.eval`` / an ``eval_fraction`` split of a lists file):

- ``reward_accuracy``: over every held-out pair with psi_i > psi_j, the fraction with
  s_i > s_j, a tie counting 1/2. Before training the policy is the reference, so every
  implicit reward is 0 and the accuracy is 0.5 by definition (chance);
- ``reward_ndcg``: NDCG of the list ordered by s (gain 2^psi - 1, psi rescaled to [0, K - 1],
  discount 1/log2(1 + rank)); tied scores get the mean discount of the ranks they share
  (the expected NDCG under a random order of the ties), so before training it is the NDCG of
  a random order;
- ``logp_accuracy``, ``logp_ndcg``: the same with the policy's own sequence log-probability
  as the score: how the model itself ranks the responses, meaningful before and after;
- ``n_lists``, ``n_pairs``.

The held-out instruction examples every run is judged on (exact-match accuracy, held-out loss)
are the task set's held-out questions, or for a lists file each held-out list's best response.

The package, one module per concern:

===============  ==========================================================================
module           holds
===============  ==========================================================================
section.py       the ``lipo:`` section (:class:`LipoSection`)
data.py          ranked lists: making them from the task set, grading, reading and writing
                 lists files, cutting long lists, the labels psi of a list
sampling.py      on-policy lists sampled from the base model
loss.py          the list losses (LiPO-lambda, pairwise DPO, softmax) on a batch
metrics.py       ranking metrics of held-out lists (pair accuracy, NDCG)
collator.py      tokenized lists and their collator (the prompt apart for sharing)
logps.py         sequence log-probabilities, the prompt run once per list (KV cache)
objective.py     the objective (:class:`LiPO`) and its registration as ``lipo``
===============  ==========================================================================
"""
