"""Data: what a run trains and is judged on, as :class:`~.instructions.InstructionExample` records.

- :mod:`.instructions`: the record (a single exchange, or the end of a conversation),
  chat-template prompts, tokenization with labels on the response tokens only, truncation
  statistics, the padding collator, the seeded validation split.
- :mod:`.formats`: reading every format (Dolly, Alpaca, ``messages``, ``prompt``/``completion``,
  ShareGPT; detected from the fields) from every source (JSON, JSON Lines, CSV, Parquet, Arrow,
  a ``save_to_disk`` folder, a ``datasets`` name) through the ``datasets`` library.
- :mod:`.conversation`: multi-turn conversations with every assistant turn labelled.
- :mod:`.tasks`: the bundled task set spectune writes itself (short instructions with exact
  answers, deterministic from a seed) and the answer checker judging uses.
- :mod:`.augment`: new training examples sampled from a model (self-instruct style), kept
  only when their answers check (``spectune augment``).

The objectives (:mod:`spectune.tuning.objectives`) turn these records into Trainer features;
ranked lists (LiPO) and teacher data (distillation) live with their objective.
"""
