"""``spectune.models.forward.as_forward``: a loss computed from a model's parts goes through the DDP wrapper's
forward, so DDP averages its gradients over the ranks (two gloo processes, one thread each, a
bare Linear). Calling the parts directly, as the objectives did before, leaves each rank with
its own gradient: the test shows both, so it fails if the wrapper is bypassed."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spectune.models.forward import as_forward, decoder_and_head
from spectune.models.forward import unwrap_model as _inner


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 1, bias=False)
        model = torch.nn.parallel.DistributedDataParallel(layer)
        x = torch.full((1, 3), float(rank + 1))  # each rank its own input: different gradients
        grads = {}
        for name, loss_of in [
            ("through the wrapper", lambda: as_forward(model, lambda m: m.weight @ x[0])),
            ("parts called directly", lambda: layer.weight @ x[0]),
        ]:
            layer.weight.grad = None
            loss_of().sum().backward()
            grads[name] = layer.weight.grad.clone().tolist()
        out[rank] = {"grads": grads, "forward_restored": "forward" not in layer.__dict__}
    finally:
        dist.destroy_process_group()


def test_a_loss_of_the_parts_is_averaged_over_ranks_only_through_the_wrapper():
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(_free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank]["forward_restored"]
        # d(w . x)/dw = x: rank 0 has 1s, rank 1 has 2s; DDP's average is 1.5 on both ranks
        assert out[rank]["grads"]["through the wrapper"] == [[1.5, 1.5, 1.5]]
        assert out[rank]["grads"]["parts called directly"] == [[rank + 1.0] * 3]


def test_without_ddp_the_loss_is_called_with_the_model_itself():
    layer = torch.nn.Linear(2, 1)
    assert as_forward(layer, lambda m: m) is layer


def test_an_instance_forward_already_set_is_restored(monkeypatch):
    """accelerate sets an instance ``forward`` (autocast); as_forward puts it back."""
    from torch.nn.parallel import DistributedDataParallel

    layer = torch.nn.Linear(2, 1)
    own = layer.forward
    layer.forward = own
    wrapper = torch.nn.Module.__new__(DistributedDataParallel)
    torch.nn.Module.__init__(wrapper)
    wrapper.module = layer
    monkeypatch.setattr(DistributedDataParallel, "forward", lambda self: self.module())
    assert as_forward(wrapper, lambda m: 7) == 7
    assert layer.__dict__["forward"] is own


def test_decoder_and_head_see_through_the_ddp_wrapper(tiny_model_dir):
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    wrapper = torch.nn.Module.__new__(DistributedDataParallel)
    torch.nn.Module.__init__(wrapper)
    wrapper.module = model
    assert _inner(wrapper) is model
    decoder, head = decoder_and_head(wrapper)
    assert decoder is model.get_decoder() and head is model.get_output_embeddings()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
