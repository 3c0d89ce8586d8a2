"""Distributed training with the package's modules: DistributedDataParallel and FSDP2 (``fully_shard``) over
gloo in two CPU processes give the gradients and the optimizer step of one process on the full batch."""
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = 2


class Net(torch.nn.Module):
    """Two neighborhood-attention layers (2-D, GQA and dilation; 1-D causal) and a linear head."""

    def __init__(self):
        super().__init__()
        import natten_mps
        self.na2d = natten_mps.nn.NeighborhoodAttention2D(16, 4, kernel_size=3, dilation=(1, 2), num_kv_heads=2)
        self.na1d = natten_mps.nn.NeighborhoodAttention1D(16, 2, kernel_size=5, is_causal=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):                       # x [B, 6, 8, 16] -> [B, 3]
        x = x + self.na2d(x)
        B, X, Y, C = x.shape
        x = x.reshape(B, X * Y, C)
        x = x + self.na1d(x)
        return self.head(x.mean(1))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 6, 8, 16, generator=g), torch.randint(0, 3, (4,), generator=g)


def _model():
    torch.manual_seed(0)
    return Net()


def _train_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)   # linear in the gradient
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    grads = {n: (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone() for n, g in grads.items()}
    opt.step()
    params = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
              for n, p in model.named_parameters()}
    return loss.detach(), grads, params


def _worker(rank, mode, port, out):
    sys.path.insert(0, ROOT)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _model()
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel
            model = DistributedDataParallel(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            mesh = init_device_mesh("cpu", (WORLD,))
            fully_shard(model.na2d, mesh=mesh)
            fully_shard(model.na1d, mesh=mesh)
            fully_shard(model, mesh=mesh)
        x, y = _batch()
        shard = slice(rank * 2, rank * 2 + 2)
        loss, grads, params = _train_step(model, x[shard], y[shard])
        dist.all_reduce(loss)
        if rank == 0:
            strip = "module."
            torch.save(dict(loss=loss / WORLD, grads={n.replace(strip, ""): g for n, g in grads.items()},
                            params={n.replace(strip, ""): p for n, p in params.items()}), out)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single():
    import natten_mps  # noqa: F401  (the tree under test)
    x, y = _batch()
    model = _model()
    return _train_step(model, x, y), sorted(n for n, _ in model.named_parameters())


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_match_one_process(mode, single, tmp_path):
    (loss1, grads1, params1), names = single
    out = str(tmp_path / f"{mode}.pt")
    mp.spawn(_worker, args=(mode, _free_port(), out), nprocs=WORLD, join=True)
    got = torch.load(out)
    assert sorted(got["grads"]) == names and sorted(got["params"]) == names
    torch.testing.assert_close(got["loss"], loss1, rtol=1e-5, atol=1e-6)
    for n in names:
        assert grads1[n].abs().max() > 0, n        # every parameter takes part (a vacuous match proves nothing)
        torch.testing.assert_close(got["grads"][n], grads1[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"grad {n}: {m}")
        torch.testing.assert_close(got["params"][n], params1[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"param {n}: {m}")
        assert not torch.equal(params1[n], _model().state_dict()[n])   # the step moved it
