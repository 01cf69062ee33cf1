"""Scale: what changes when a run is bigger than one process or than the machine's memory.

- :mod:`.distributed`: runs launched by ``torchrun`` or ``accelerate launch``: the process
  groups, steps every rank runs or rank 0 runs alone, their errors as one line on every rank.
  The CLI imports it at start-up (for its one-line errors), so it imports torch only inside
  the functions that need it.
- :mod:`.memory`: the memory a run will take, estimated before it starts (``spectune memory``).
"""
