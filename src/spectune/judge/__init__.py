"""Judge: how good a model is, measured without test data of the user's.

Learning (held-out exact-match accuracy and loss on the task), forgetting (perplexity on a
fixed slice of general text, ``pydoc_data.topics``), generation latency. Read the warning in
:mod:`spectune.models` about bitsandbytes 4-bit models before judging a QLoRA model.
"""
