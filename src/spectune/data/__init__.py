"""Data: what a run trains and is judged on, as :class:`~.examples.InstructionExample` records.

- :mod:`.examples`: the record (a single exchange, or the end of a conversation), the
  formats ``data.format`` names, reading a data file's text.
- :mod:`.instructions`: chat-template prompts, tokenization with labels on the response tokens
  only (in a multi-turn conversation every assistant turn, or the last), truncation
  statistics, the padding collator, the seeded validation split.
- :mod:`.formats`: reading every format (Dolly, Alpaca, ``messages``, ``prompt``/``completion``,
  ShareGPT; detected from the fields) from every source (JSON, JSON Lines, CSV, Parquet, Arrow,
  a ``save_to_disk`` folder, a ``datasets`` name) through the ``datasets`` library.
- :mod:`.tasks`: the bundled task set spectune writes itself (short instructions with exact
  answers, deterministic from a seed) and the answer checker judging uses.
- :mod:`.augment`: new training examples sampled from a model (self-instruct style), kept
  only when their answers check (``spectune augment``).

The objectives (:mod:`spectune.tuning.objectives`) turn these records into Trainer features;
ranked lists (LiPO) and teacher data (distillation) live with their objective.
"""
