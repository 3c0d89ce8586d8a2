"""Smoke tests of the benchmark scripts: they run with one or two repeats and report every row."""
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
        assert all(name.startswith("attn_forward_") for name in r["emulator"]["kernels"])
    assert any("natten-mlx" in n for n in data["notes"]) or any(r["natten_mlx_ms"] for r in rows)


def test_bench_new_features_plot(tmp_path):
    png = tmp_path / "bars.png"
    bench_new_features.main(["--tiny", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--features", "baseline",
                             "fmha", "--no-emulator-costs", "--plot", str(png)])
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_bench_fallback_smoke(tmp_path):
    """Ours and masked SDPA each in a worker, interleaved; a missing peer is a note, a peer slower
    than --max-call-s is skipped with a note (never this project)."""
    import bench_fallback
    path = tmp_path / "fallback.json"
    bench_fallback.main(["--configs", "1d", "--repeats", "2", "--warmup", "1", "--no-upstream", "--device", "cpu",
                         "--json", str(path)])
    payload = json.loads(path.read_text())
    fwd, both = payload["results"]["1d_fwd"], payload["results"]["1d_fwdbwd"]
    for row in (fwd, both):
        assert row["ours_ms"] > 0 and row["masked_sdpa_ms"] > 0 and row["natten_mps_pure_ms"] is None
    assert any("natten-mps (pure) not measured" in n for n in payload["notes"])
    bench_fallback.main(["--configs", "1d", "--repeats", "1", "--warmup", "1", "--no-upstream", "--no-backward",
                         "--device", "cpu", "--max-call-s", "1e-9", "--json", str(path)])
    payload = json.loads(path.read_text())
    assert payload["results"]["1d_fwd"]["masked_sdpa_ms"] is None
    assert payload["results"]["1d_fwd"]["ours_ms"] > 0
    assert any("masked SDPA" in n and "skipped" in n for n in payload["notes"])


def test_interleaved_rounds_alternate_and_settle():
    """Contenders alternate round by round, each round after a pause of ``settle_s``."""
    import time

    import harness
    calls = []

    def sampler(name):
        def sample(n):
            calls.append((name, time.perf_counter()))
            return [1.0 if name == "a" else 2.0] * n
        return sample

    med, errors = harness.interleaved_medians({"a": sampler("a"), "b": sampler("b")}, 6, per_round=2, settle_s=0.02)
    assert med == {"a": 1.0, "b": 2.0} and not errors
    assert [name for name, _ in calls] == ["a", "b"] * 3
    gaps = [t1 - t0 for (_, t0), (_, t1) in zip(calls, calls[1:])]
    assert min(gaps) >= 0.02


def test_bench_metal_proxy_report_of_a_saved_run(capsys):
    """The proxy's tables re-render from the saved H200 run (no GPU needed), with the label."""
    import bench_metal_proxy
    saved = os.path.join(BENCH, "results", "metal_proxy_h200_2026-12-05_e8d84a6.json")
    assert bench_metal_proxy.main(["--report", saved]) == 0
    out = capsys.readouterr().out
    assert "Metal kernels translated to CUDA on NVIDIA H200" in out and "not Apple timings" in out
    assert "| 2D 64x64 K=7 | float32 |" in out and "ours/theirs fwd+bwd kernels" in out
    assert "Dense (flash) attention" in out


def test_bench_sage_smoke(tmp_path):
    """The seed table's columns for a few lengths, the published reference, emulator counters, accuracy."""
    import bench_sage
    path = tmp_path / "sage.json"
    payload = bench_sage.main(["--seq-len", "64", "256", "--iterations", "2", "--warmup", "1", "--device", "cpu",
                               "--accuracy", "--json", str(path), "--plot", str(tmp_path / "sage.png")])
    rows = payload["results"]
    assert [r["seq_len"] for r in rows] == [64, 256]
    for r in rows:
        assert r["manual_ms"] > 0 and r["sdpa_ms"] > 0 and r["sage_ms"] > 0 and not r["errors"]
        assert r["emulator"]["dispatches"] >= 1 and r["emulator"]["bytes"] > 0
    assert rows[1]["published_mlx"] == list(bench_sage.PUBLISHED[256]) or rows[1]["published_mlx"] == bench_sage.PUBLISHED[256]
    acc = {a["test"]: a for a in payload["accuracy"]}
    assert len(acc) == 4
    assert all(a["cosine"] > 0.9999 and a["max_diff"] < 1e-4 for n, a in acc.items() if "INT8" not in n)
    assert acc["sageattn INT8 (smooth_k) vs standard"]["cosine"] >= 0.999
    assert (tmp_path / "sage.png").read_bytes()[:4] == b"\x89PNG"
