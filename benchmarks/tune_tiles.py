"""Measure the pure path's forward time per query-tile size, to choose ``default_tile`` from data.

    python benchmarks/tune_tiles.py [--repeats 15] [--configs 1d 2d32 ...] [--tiles 1d=16,32,64 ...]

Each tile setting is timed through ``NATTEN_MPS_TILE_{rank}D`` (an int, or a comma list per axis);
settings are interleaved twice so a slow phase of the machine does not favour one of them.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
from bench_fallback import CONFIGS, inputs  # noqa: E402

DEFAULT_TILES = {1: ["16", "26", "32", "64"], 2: ["4", "8", "16", "8,16"], 3: ["2", "4", "2,4,4", "8"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["1d", "2d32", "2d64", "3d16", "1d4096"])
    ap.add_argument("--tiles", nargs="*", default=[], help="rank=t1,t2,... e.g. 2d=4,8,16 (';' separates per-axis lists)")
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    import natten_mps
    from natten_mps.backends import pure, tiling
    natten_mps.set_backend("pure")
    tiles = dict(DEFAULT_TILES)
    for spec in args.tiles:
        rank, values = spec.split("=")
        tiles[int(rank[0])] = values.split(";") if ";" in values else values.split(",")
    rows = []
    for name in args.configs:
        cfg = CONFIGS[name]
        rank = len(cfg["spatial"])
        fn = getattr(natten_mps, f"na{rank}d")
        q, k, v = inputs(cfg, "cpu")
        best = {}
        for _ in range(2):
            for t in tiles[rank]:
                os.environ[f"NATTEN_MPS_TILE_{rank}D"] = t
                pure.clear_caches()
                ms = harness.time_ms(lambda: fn(q, k, v, cfg["kernel"]), "cpu", 3, args.repeats)
                best[t] = min(best.get(t, float("inf")), ms)
        os.environ.pop(f"NATTEN_MPS_TILE_{rank}D", None)
        pure.clear_caches()
        default = [tiling.default_tile(rank, n, cfg["kernel"], i, flash_forward=True) for i, n in enumerate(cfg["spatial"])]
        winner = min(best, key=best.get)
        rows.append([cfg["label"], "  ".join(f"{t}: {ms:.2f}" for t, ms in best.items()), winner,
                     ",".join(map(str, default))])
    harness.print_table(["config", "tile: best median ms", "fastest", "default_tile"], rows)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
