"""On-device autotuning (natten_mps/tuning.py) under the emulator, with a fake clock.

The clock (``tuning.set_timer``) makes a chosen candidate fastest, so every outcome is
deterministic: a miss tunes and writes the cache, a hit (a new process: ``forget()``) times nothing,
stale entries (another shader hash or torch version, a candidate no longer in the registry) and a
corrupt file are ignored, the budgets stop timing, the switches and pins apply, a chosen variant's
runs are bit-identical, torch.compile(fullgraph=True) neither breaks nor recompiles, and every
candidate is exact against the float64 reference.
"""
import json

import pytest
import torch

import natten_mps
from conftest import GRAD_TOL, TOL
from natten_mps import tuning
from natten_mps.backends import metal
from natten_mps.metal import emulator
from reference import reference_na


class FakeClock:
    """``fastest`` runs in 1 ms, every other candidate in 2 ms; each timing spends ``spend`` s."""

    def __init__(self, fastest, spend=0.001):
        self.fastest, self.spend, self.timed = fastest, spend, []

    def __call__(self, name, run, device):
        self.timed.append(name)
        return (1e-3 if name == self.fastest else 2e-3), self.spend


@pytest.fixture
def tuned(emulate, monkeypatch, tmp_path):
    """Emulation on, tuning on, the cache in a temporary file, a fresh process state."""
    monkeypatch.setenv(tuning.ENV_CACHE, str(tmp_path / "tuning.json"))
    monkeypatch.delenv(tuning.ENV_PIN, raising=False)
    monkeypatch.setenv(tuning.ENV_TUNE, "1")
    tuning.forget()
    return tmp_path / "tuning.json"


def qkv(shape=(1, 24, 2, 16), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(3)]


def forward(q, k, v, ks=5):
    r = q.dim() - 3
    return metal.attention_forward(q, k, v, [ks] * r, [1] * r, [1] * r, [False] * r, q.shape[-1] ** -0.5)


def kernels(fn):
    with emulator.counting() as c:
        result = fn()
    return result, [s.kernel for s in c.launches]


def test_miss_tunes_and_caches_then_a_new_process_hits(tuned):
    clock = FakeClock("slice-8")
    tuning.set_timer(clock)
    q, k, v = qkv()
    (out, _), names = kernels(lambda: forward(q, k, v))
    assert "default" in clock.timed and "slice-8" in clock.timed and len(clock.timed) == len(set(clock.timed))
    assert names[-1] == "attn_forward_float32_8_r1_b4"             # the launch uses the choice
    assert len(names) == len(clock.timed) + 1                         # one checked run a candidate
    entries = json.loads(tuned.read_text())["entries"]
    (key, entry), = entries.items()
    assert entry["variant"] == "slice-8" and "shader " + tuning.shader_hash() in key
    assert f"torch {torch.__version__}" in key
    (c,) = tuning.choices()
    assert (c.candidate.name, c.source) == ("slice-8", "tuned")
    tuning.forget()                                                   # the next process
    clock.timed.clear()
    (again, _), names = kernels(lambda: forward(q, k, v))
    assert clock.timed == [] and names == ["attn_forward_float32_8_r1_b4"]
    assert tuning.choices()[0].source == "cache" and torch.equal(out, again)
    assert "slice-8 [cache]" in tuning.report()


def _entry_for(variant):
    c = tuning.candidate(variant)
    return {"variant": variant, "tiling": {f: getattr(c.tiling, f) for f in c.tiling.__dataclass_fields__}}


def test_stale_and_invalid_entries_are_ignored(tuned, monkeypatch):
    clock = FakeClock("slice-8")
    tuning.set_timer(clock)
    q, k, v = qkv()
    bucket = tuning.bucket_of("forward", q, k, v, [5], False)
    key = tuning.cache_key(bucket, q.device)
    other_shader = key.replace(tuning.shader_hash(), "0123456789abcdef")
    other_torch = key.replace(f"torch {torch.__version__}", "torch 0.0")
    stale = {other_shader: _entry_for("slice-16"), other_torch: _entry_for("slice-16")}
    tuned.write_text(json.dumps({"format": tuning.CACHE_FORMAT, "entries": stale}))
    forward(q, k, v)
    assert "default" in clock.timed and tuning.choices()[0].candidate.name == "slice-8"
    kept = json.loads(tuned.read_text())["entries"]
    assert set(stale) <= set(kept) and kept[key]["variant"] == "slice-8"   # others' entries kept
    # an entry of this key whose candidate is unknown, or whose tiling is not the candidate's
    for bad in ({"variant": "warp-speed", "tiling": {}}, dict(_entry_for("slice-16"), tiling={"ds": 4}),
                {"variant": "backward-fused", "tiling": _entry_for("backward-fused")["tiling"]}):
        tuned.write_text(json.dumps({"format": tuning.CACHE_FORMAT, "entries": {key: bad}}))
        tuning.forget()
        clock.timed.clear()
        with pytest.warns(RuntimeWarning, match="not a valid candidate"):
            tuning._warned.clear()
            forward(q, k, v)
        assert clock.timed and tuning.choices()[0].candidate.name == "slice-8"


@pytest.mark.parametrize("text", ["{not json", json.dumps([1, 2]), json.dumps({"format": 99, "entries": {}})])
def test_corrupt_cache_is_ignored_and_replaced(tuned, text):
    tuned.write_text(text)
    tuning._warned.clear()
    clock = FakeClock("slice-8")
    tuning.set_timer(clock)
    q, k, v = qkv()
    with pytest.warns(RuntimeWarning, match="corrupt"):
        forward(q, k, v)
    assert tuning.choices()[0].candidate.name == "slice-8"
    data = json.loads(tuned.read_text())
    assert data["format"] == tuning.CACHE_FORMAT and len(data["entries"]) == 1


def test_budgets_are_respected(tuned, monkeypatch):
    monkeypatch.setattr(tuning, "BUCKET_BUDGET_S", 0.25)
    monkeypatch.setattr(tuning, "PROCESS_BUDGET_S", 0.45)
    clock = FakeClock("nothing", spend=0.1)
    tuning.set_timer(clock)
    q, k, v = qkv()
    out, lse = forward(q, k, v)                          # bucket 1: 3 timings reach 0.3 >= 0.25
    assert len(clock.timed) == 3 and clock.timed[0] == "default"
    assert "budget spent" in tuning.choices()[0].reason
    assert not json.loads(tuned.read_text())["entries"].popitem()[1]["complete"]
    metal.attention_backward(torch.randn_like(out), None, q, k, v, out, lse, [5], [1], [1], [False], 0.25)
    assert len(clock.timed) == 5                         # bucket 2: the process budget (0.45) ends it
    forward(*qkv((2, 40, 2, 16)), ks=3)                  # bucket 3: nothing left, the defaults, not cached
    assert len(clock.timed) == 5
    last = tuning.choices()[-1]
    assert last.source == "default" and "process tuning budget" in last.reason
    assert len(json.loads(tuned.read_text())["entries"]) == 2


def test_switches(emulate, monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.ENV_CACHE, str(tmp_path / "t.json"))
    clock = FakeClock("slice-4")
    tuning.set_timer(clock)
    q, k, v = qkv()
    monkeypatch.delenv(tuning.ENV_TUNE, raising=False)
    assert not tuning.enabled(q.device) and tuning.enabled(torch.device("mps"))   # default: MPS only
    forward(q, k, v)
    monkeypatch.setenv(tuning.ENV_TUNE, "0")
    forward(q, k, v)
    assert clock.timed == [] and not (tmp_path / "t.json").exists()
    tuning.set_enabled(True)                                     # the setter wins over the environment
    forward(q, k, v)
    assert clock.timed
    tuning.set_enabled(None)
    monkeypatch.setenv(tuning.ENV_TUNE, "yes")
    with pytest.raises(ValueError, match=tuning.ENV_TUNE):
        forward(q, k, v)


def test_pins(emulate, monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.ENV_CACHE, str(tmp_path / "t.json"))
    monkeypatch.setenv(tuning.ENV_TUNE, "0")
    q, k, v = qkv()
    tuning.pin("slice-8")
    (out, lse), names = kernels(lambda: forward(q, k, v))
    assert names == ["attn_forward_float32_8_r1_b4"]
    assert "pinned to slice-8" in tuning.report()
    tuning.pin(None)
    monkeypatch.setenv(tuning.ENV_PIN, "forward=stage-1,backward=backward-split")
    _, names = kernels(lambda: forward(q, k, v))
    assert not names[0].endswith("_b4")
    _, names = kernels(lambda: metal.attention_backward(torch.randn_like(out), None, q, k, v, out, lse, [5], [1],
                                                        [1], [False], 0.25))
    assert not any(n.startswith("attn_backward_fused") for n in names)
    monkeypatch.setenv(tuning.ENV_PIN, "warp-speed")
    with pytest.raises(ValueError, match="warp-speed"):
        forward(q, k, v)
    with pytest.raises(ValueError, match="warp-speed"):
        tuning.pin("warp-speed")


def test_chosen_variant_is_deterministic_and_exact(tuned):
    """Once chosen, runs are bit-identical (forward and backward), and within the dtype's tolerance of
    the float64 reference."""
    tuning.set_timer(FakeClock("walk-union"))
    q, k, v = qkv((2, 19, 2, 16), seed=3)
    runs = []
    for _ in range(2):
        out, lse = forward(q, k, v)
        dout = torch.ones_like(out)
        runs.append((out, lse) + metal.attention_backward(dout, None, q, k, v, out, lse, [5], [1], [1], [False],
                                                           0.25)[:3])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert [c.candidate.name for c in tuning.choices()] == ["walk-union", "walk-union"]
    ref = [t.double() for t in (q, k, v)]
    ro, _ = reference_na(*ref, [5], [1], [1], [False], scale=0.25)
    torch.testing.assert_close(runs[0][0].double(), ro, atol=TOL[torch.float32], rtol=TOL[torch.float32])


def test_torch_compile_fullgraph_no_recompile(tuned):
    """Tuning happens inside the opaque ops: a fullgraph compile of the public API runs the tuned
    variant with no graph break, and a second call of the same shape does not recompile."""
    import torch._dynamo
    tuning.set_timer(FakeClock("slice-8"))
    torch._dynamo.reset()
    fn = torch.compile(lambda q, k, v: natten_mps.na1d(q, k, v, kernel_size=5), fullgraph=True, backend="aot_eager")
    q, k, v = (t.view(1, 24, 2, 16) for t in qkv())
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = fn(q, k, v)
        out2 = fn(*(t + 1 for t in (q, k, v)))
    assert torch.equal(out, natten_mps.na1d(q, k, v, kernel_size=5))
    assert out2.shape == out.shape
    assert [c.candidate.name for c in tuning.choices()] == ["slice-8"]


def test_tune_ahead_of_time(tuned):
    tuning.set_timer(FakeClock("slice-4"))
    made = natten_mps.tune({"shape": (1, 24, 2, 16), "kernel_size": 5}, {"shape": (1, 6, 5, 2, 8), "kernel_size": 3},
                           {"shape": (1, 20, 2, 16)}, dtype=torch.float32)
    assert [c.bucket.op for c in made] == ["forward", "backward"] * 3
    assert [c.bucket.window for c in made] == ["short"] * 4 + ["dense"] * 2
    assert len(json.loads(tuned.read_text())["entries"]) == 6
    with pytest.raises(ValueError, match="shape"):
        natten_mps.tune({"shape": (4, 2)})
    with pytest.raises(TypeError, match="shape"):
        natten_mps.tune((1, 24, 2, 16))
    natten_mps.set_emulation(False)
    with pytest.raises(ValueError, match="Metal"):
        natten_mps.tune({"shape": (1, 24, 2, 16), "kernel_size": 5})


SMALL = [((1, 21, 2, 16), 5), ((1, 6, 7, 2, 8), 3)]


@pytest.mark.parametrize("shape,ks", SMALL)
def test_every_candidate_is_exact(shape, ks, emulate):
    """Every registered candidate (forced) against the float64 reference: forward, LSE, gradients."""
    r = len(shape) - 3
    q, k, v = qkv(shape, seed=ks)
    args = ([ks] * r, [1] * r, [1] * r, [True] + [False] * (r - 1), 0.3)
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    ro, rl = reference_na(*ref, *args[:4], scale=0.3)
    dout = torch.randn(ro.shape, generator=torch.Generator().manual_seed(1))
    (ro * dout.double()).sum().backward()
    seen = set()
    for cand in tuning.CANDIDATES:
        with metal.force_tiling(cand.tiling):
            (out, lse), names = kernels(lambda: metal.attention_forward(q, k, v, *args))
            grads, bnames = kernels(lambda: metal.attention_backward(dout, None, q, k, v, out, lse, *args))
        seen.add(tuple(names + bnames))
        torch.testing.assert_close(out.double(), ro, atol=TOL[torch.float32], rtol=TOL[torch.float32])
        torch.testing.assert_close(lse.double(), rl, atol=TOL[torch.float32], rtol=TOL[torch.float32])
        for got, x in zip(grads, ref):
            torch.testing.assert_close(got.double(), x.grad, atol=GRAD_TOL[torch.float32],
                                       rtol=GRAD_TOL[torch.float32], msg=lambda m: f"{cand.name}: {m}")
    assert len(seen) >= 5                      # the candidates launch different kernels


def test_registry_takes_new_variants():
    cand = tuning.Candidate("dense-test", metal.Tiling(variant="test"), applies=lambda b: b.window == "dense")
    tuning.register(cand)
    try:
        dense = tuning.Bucket("forward", 1, "float32", 64, "dense", 10)
        assert cand in tuning.candidates_for(dense)
        assert cand not in tuning.candidates_for(tuning.Bucket("forward", 1, "float32", 64, "short", 10))
    finally:
        tuning.CANDIDATES.remove(cand)
    with pytest.raises(TypeError, match="Candidate"):
        tuning.register("slice-4")


def test_device_timer_on_the_emulator(tuned, monkeypatch):
    """The real timer (synchronised wall clock) works on the emulator; a spent bucket budget stops
    after the default, which is then kept."""
    monkeypatch.setattr(tuning, "BUCKET_BUDGET_S", 0.0)
    q, k, v = qkv()
    forward(q, k, v)
    (c,) = tuning.choices()
    assert list(c.times_ms) == ["default"] and c.times_ms["default"] > 0 and c.candidate.name == "default"
    assert not json.loads(tuned.read_text())["entries"].popitem()[1]["complete"]
