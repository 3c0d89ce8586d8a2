"""Shared timing and reporting for every benchmark script: device sync, warm-up, median, tables, JSON."""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch


def best_device() -> str:
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def synchronize(device: str) -> None:
    if device == "mps":
        torch.mps.synchronize()
    elif device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, warmup: int = 5, repeats: int = 30,
            sync: Optional[Callable[[], None]] = None) -> float:
    """Median wall time of ``fn`` in milliseconds, synchronising the device before each clock read."""
    sync = sync or (lambda: synchronize(device))
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def fmt_ms(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.2f} ms"


def fmt_ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or a <= 0:
        return "—"
    return f"{b / a:.1f}x"


def print_table(headers: Sequence[str], rows: List[Sequence[str]], markdown: bool = False) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    if markdown:
        lines = ["| " + " | ".join(str(h) for h in headers) + " |",
                 "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    else:
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*(str(c) for c in r)) for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(path: str, payload: Dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
