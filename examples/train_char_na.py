"""Train a small causal 1-D neighborhood-attention character model on Python's own source text.

    python examples/train_char_na.py [--steps 300] [--device auto|mps|cuda|cpu] [--compile]
        [--checkpoint] [--kernel-size 33] [--out loss.png]

The corpus is the standard library's own ``.py`` files (it ships with every Python), read as bytes;
the model is an embedding, ``--layers`` pre-norm blocks of ``natten_mps.nn.NeighborhoodAttention1D``
(causal: each character sees the ``kernel_size`` characters up to itself) and an MLP, and a linear
head predicting the next byte. ``--compile`` wraps the model in ``torch.compile``; ``--checkpoint``
recomputes each block in the backward pass (activation checkpointing). It prints a progress line,
the held-out loss at the end, and saves the training-loss curve as a PNG.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from natten_mps.nn import NeighborhoodAttention1D  # noqa: E402


def corpus(max_bytes: int) -> torch.Tensor:
    """Bytes of the standard library's .py files, in a fixed order, up to ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).long()


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kernel_size: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention1D(dim, heads, kernel_size, is_causal=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CharModel(nn.Module):
    def __init__(self, dim=128, heads=4, layers=2, kernel_size=33, use_checkpoint=False):
        super().__init__()
        self.embed = nn.Embedding(256, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kernel_size) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 256)
        self.use_checkpoint = use_checkpoint

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.use_checkpoint and self.training else block(x)
        return self.head(self.norm(x))


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batches(data: torch.Tensor, batch: int, seq: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, data.numel() - seq - 1, (batch,), generator=generator)
        idx = starts[:, None] + torch.arange(seq + 1)
        chunk = data[idx]
        yield chunk[:, :-1], chunk[:, 1:]


def save_curve(losses, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / byte)")
    ax.set_title("causal 1-D neighborhood attention, Python stdlib text")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--kernel-size", type=int, default=33)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--corpus-bytes", type=int, default=4_000_000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--checkpoint", action="store_true", help="activation checkpointing per block")
    ap.add_argument("--out", default="loss.png", help="loss curve (PNG)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    data = corpus(args.corpus_bytes)
    split = int(0.95 * data.numel())
    train, held_out = data[:split], data[split:]
    model = CharModel(args.dim, 4, args.layers, args.kernel_size, args.checkpoint).to(device)
    step_model = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    loader = batches(train, args.batch, args.seq, torch.Generator().manual_seed(args.seed))
    losses, t0 = [], time.perf_counter()
    print(f"{data.numel() / 1e6:.1f} MB of stdlib source, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
          f"parameters, device {device}, compile={args.compile}, checkpoint={args.checkpoint}")
    for step in range(args.steps):
        x, y = (t.to(device) for t in next(loader))
        logits = step_model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        done = (step + 1) / args.steps
        bar = "#" * int(30 * done)
        rate = (step + 1) / (time.perf_counter() - t0)
        print(f"\r[{bar:<30}] step {step + 1}/{args.steps} loss {losses[-1]:.3f} ({rate:.1f} steps/s)",
              end="" if step + 1 < args.steps else "\n", flush=True)
    model.eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(args.seed + 1)
        xs, ys = next(batches(held_out, args.batch, args.seq, gen))
        held = nn.functional.cross_entropy(model(xs.to(device)).reshape(-1, 256).float(), ys.to(device).reshape(-1)).item()
    print(f"held-out loss {held:.3f} nats/byte (uniform guess: {math.log(256):.3f})")
    if args.out:
        save_curve(losses, args.out)
        print(f"loss curve: {os.path.abspath(args.out)}")
    return {"losses": losses, "held_out": held, "device": str(device)}


if __name__ == "__main__":
    main()
