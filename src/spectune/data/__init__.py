"""Data: what a run trains and is judged on.

- :mod:`.instructions`: Dolly JSONL / Alpaca JSON loading, chat-template prompts,
  tokenization with labels on response tokens only, truncation statistics, the padding
  collator, the validation split.
- :mod:`.tasks`: the bundled task set spectune writes itself (short instructions with exact
  answers, deterministic from a seed) and the answer checker.
- :mod:`.augment`: new training examples sampled from a model (self-instruct style), kept
  only when their answers check.
"""
