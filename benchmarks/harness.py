"""Shared timing and reporting for every benchmark script: device sync, warm-up, median, tables, JSON."""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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


def sample_ms(fn: Callable[[], object], device: str, n: int,
              sync: Optional[Callable[[], None]] = None) -> List[float]:
    """``n`` wall times of ``fn`` in milliseconds, synchronising the device before each clock read."""
    sync = sync or (lambda: synchronize(device))
    sync()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_ms(fn: Callable[[], object], device: str, warmup: int = 5, repeats: int = 30,
            sync: Optional[Callable[[], None]] = None) -> float:
    """Median wall time of ``fn`` in milliseconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(sample_ms(fn, device, repeats, sync))


class ContenderError(RuntimeError):
    """A contender's failure whose message is already formatted (e.g. relayed from a worker process)."""


def interleaved_medians(samplers: Dict[str, Callable[[int], List[float]]], repeats: int, per_round: int = 5,
                        settle_s: float = 0.0) -> Tuple[Dict[str, Optional[float]], Dict[str, str]]:
    """Median per contender, sampled in alternating rounds of ``per_round`` calls.

    A slow phase of a shared machine then hits every contender alike, so the ratios between them
    hold even when the absolute times drift. ``samplers[name](n)`` returns ``n`` times in ms (already
    warmed up). ``settle_s``: a pause before each round, so that worker threads another process left
    spinning (OpenMP keeps idle threads busy-waiting for a few ms after each parallel region) have
    gone to sleep before the next contender is timed; without it the contender timed right after
    a slow one runs its short round on a shared core. Returns ``(medians, errors)``: a sampler that
    raises is dropped, its median is None and ``errors[name]`` holds the first line of its message.
    """
    samples: Dict[str, List[float]] = {name: [] for name in samplers}
    errors: Dict[str, str] = {}
    done = 0
    while done < repeats:
        n = min(per_round, repeats - done)
        for name, sampler in samplers.items():
            if name in errors:
                continue
            if settle_s:
                time.sleep(settle_s)
            try:
                samples[name] += sampler(n)
            except Exception as e:  # noqa: BLE001 - reported to the caller
                errors[name] = str(e) if isinstance(e, ContenderError) else \
                    f"{type(e).__name__}: " + (str(e).strip().splitlines() or [""])[0]
        done += n
    medians = {name: statistics.median(s) if s and name not in errors else None for name, s in samples.items()}
    return medians, errors


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
