"""Smoke test: the feature benchmark runs with one repeat on tiny sizes and reports every feature row."""
import json
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import bench_new_features  # noqa: E402


def test_bench_new_features_smoke(tmp_path):
    path = tmp_path / "out.json"
    bench_new_features.main(["--tiny", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--json", str(path)])
    data = json.loads(path.read_text())
    rows = data["results"]
    assert {r["feature"] for r in rows} == set(bench_new_features.FEATURES)
    assert len(rows) == len(bench_new_features.cases(tiny=True))
    for r in rows:
        assert r["ours_ms"] > 0
        assert r["published_natten_mps_ms"] is not None
        assert r["emulator"]["dispatches"] >= 1 and r["emulator"]["bytes_read"] > 0
        assert sum(k["dispatches"] for k in r["emulator"]["kernels"].values()) == r["emulator"]["dispatches"]
        assert all(name.startswith("na_forward_") for name in r["emulator"]["kernels"])
    assert any("natten-mlx" in n for n in data["notes"]) or any(r["natten_mlx_ms"] for r in rows)


def test_bench_new_features_plot(tmp_path):
    png = tmp_path / "bars.png"
    bench_new_features.main(["--tiny", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--features", "baseline",
                             "fmha", "--no-emulator-costs", "--plot", str(png)])
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
