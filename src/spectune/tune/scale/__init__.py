"""Scale: training on more than one process (:mod:`.distributed`: torchrun and accelerate) and
the memory a run will take before it starts (:mod:`.memory`)."""
