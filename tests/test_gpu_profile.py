"""The emulated GPU profile: the host sizes tiles as it would on a Mac (backends/gpu_profile.py).

Named profiles and their threadgroup targets; selection by NATTEN_MPS_GPU_PROFILE and set_profile;
an MPS device's profile from its name and core count; the default under emulation is an M-series
GPU, so the emulator launches the kernels a Mac launches for the same shape (small problems: the
narrow-slice, batched-staging "_b4" kernels); the "none" profile keeps the large tiles; Apple
defaults (128 threads, 12 KB chunks, backward slices at most 16 floats) against the shader's
declared arrays; and both profiles' kernels against the float64 reference.
"""
import types

import pytest
import torch

from conftest import GRAD_TOL, TOL
from natten_mps.backends import gpu_profile as profiles
from natten_mps.backends import metal
from natten_mps.metal import emulator
from reference import reference_na


def problem(shape, ks, device="meta", dtype=torch.float32, backward=False, tile_keys=False):
    r = len(shape) - 3
    q = torch.empty(shape, device=device, dtype=dtype)
    return metal._Problem(q, q, q, [ks] * r, [1] * r, [1] * r, [False] * r, False, 0, tile_keys=tile_keys,
                          backward=backward)


def test_named_profiles_and_targets():
    m1 = profiles.get("apple-m1")
    assert (m1.family, m1.cores, m1.simdgroups, m1.stage_bytes) == ("apple", 8, 4, 12288)
    # a core of 60 KB holds 5 chunks of 12 KB; 24 resident SIMD-groups are 6 tiles of 4: 5 a core
    assert m1.threadgroups_per_core() == 5 and m1.target_threadgroups() == 40
    assert profiles.get("apple-m1-max").target_threadgroups() == 160
    assert profiles.get("h200").target_threadgroups() == 198 and profiles.get("none").target_threadgroups() == 0
    for p in profiles.PROFILES.values():
        assert p.stage_bytes <= metal.shader_stage_bytes() <= p.max_threadgroup_memory == 32768
        assert 32 * max(p.simdgroups, p.simdgroups_own) <= p.max_threads == 1024
    with pytest.raises(ValueError, match="apple-m1"):
        profiles.get("apple-m9")
    with pytest.raises(ValueError, match="stage_bytes"):
        profiles.GPUProfile("x", "apple", 8, 4, 4, stage_bytes=65536)


def test_selection_env_setter_and_default(monkeypatch, gpu_profile):
    cpu = torch.device("cpu")
    monkeypatch.delenv(profiles.ENV, raising=False)
    assert profiles.profile_for(cpu).name == profiles.DEFAULT_EMULATED
    assert profiles.profile_for(cpu).family == "apple"
    monkeypatch.setenv(profiles.ENV, "apple-m1")
    assert profiles.profile_for(cpu).name == "apple-m1"
    gpu_profile("none")                          # the setter wins over the environment
    assert profiles.profile_for(cpu).name == "none"
    gpu_profile(None)
    monkeypatch.setenv(profiles.ENV, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        profiles.profile_for(cpu)
    with pytest.raises(ValueError, match="bogus"):
        profiles.set_profile("bogus")


def test_mps_profile_from_the_device(monkeypatch):
    monkeypatch.delenv(profiles.ENV, raising=False)
    monkeypatch.setattr(profiles, "_device_cache", {})
    monkeypatch.setattr(torch.backends.mps, "get_name", lambda: "Apple M3", raising=False)
    monkeypatch.setattr(torch.backends.mps, "get_core_count", lambda: 10, raising=False)
    p = profiles.profile_for(torch.device("mps"))
    assert (p.family, p.cores, p.target_threadgroups()) == ("apple", 10, 50)

    def fail():
        raise RuntimeError("no device query")
    monkeypatch.setattr(profiles, "_device_cache", {})
    monkeypatch.setattr(torch.backends.mps, "get_core_count", fail, raising=False)
    assert profiles.profile_for(torch.device("mps")) == profiles.PROFILES["apple-m3"]     # by name
    monkeypatch.setattr(profiles, "_device_cache", {})
    monkeypatch.setattr(torch.backends.mps, "get_name", fail, raising=False)
    assert profiles.profile_for(torch.device("mps")) == profiles.PROFILES[profiles.DEFAULT_APPLE]


SHAPES = [((1, 64, 2, 32), 7), ((2, 256, 4, 64), 7), ((1, 16, 16, 2, 32), 3), ((1, 8, 8, 8, 2, 16), 3),
          ((4, 4096, 8, 64), 63), ((2, 64, 64, 4, 128), 13)]


@pytest.mark.parametrize("shape,ks", SHAPES)
def test_emulator_tiles_as_the_mac(shape, ks, monkeypatch):
    """Under emulation the host chooses, for every op's tilings, what an MPS device of the default
    profile chooses (the host reads only shapes, dtype and device of its tensors)."""
    monkeypatch.delenv(profiles.ENV, raising=False)
    monkeypatch.setattr(profiles, "_device_cache", {("mps", None): profiles.PROFILES[profiles.DEFAULT_EMULATED]})
    # no MPS here: the pipelines' thread limit (read from compiled MPS kernels) is the emulator's
    from natten_mps.metal import msl, runtime
    monkeypatch.setattr(runtime, "thread_limit", lambda *a, **kw: msl.emulated_max_threads())
    r = len(shape) - 3
    for backward in (False, True):
        for tile_keys in (False, True):
            seen = []
            for device in ("cpu", "mps"):
                q = types.SimpleNamespace(shape=torch.Size(shape), dtype=torch.float16, device=torch.device(device))
                p = metal._Problem(q, q, q, [ks] * r, [1] * r, [1] * r, [False] * r, False, 0,
                                   tile_keys=tile_keys, backward=backward)
                seen.append((p.DS, p.NG, p.u, p.a, p.NB, p.own_walk, p.KC, p.grid()))
            assert seen[0] == seen[1]


def test_small_problems_take_the_mac_kernels_large_ones_the_large_tiles(gpu_profile):
    small = problem((1, 64, 2, 32), 7)
    assert small.NB == metal.STAGE_BATCH and small.DS in metal.BATCHED_SLICES
    big = problem((4, 4096, 8, 64), 63)
    assert big.NB == 1 and big.threads_per_group == 128 and big.DS in (16, 32)
    gpu_profile("none")
    small = problem((1, 64, 2, 32), 7)
    assert small.NB == 1 and small.threads_per_group == 256


def test_apple_defaults_fit_an_m_series_core(gpu_profile):
    """128 threads, chunks within 12 KB (the shader declares 12 KB), backward slices at most 16
    floats where 8 lanes cover the head dim (dK/dV: 4 x DS floats a lane); half rows are staged as
    half, bfloat16 (unpacked once) and float32 rows as float, forward and backward."""
    assert metal.STAGE_BYTES == metal.shader_stage_bytes() == 12288
    for shape, ks in SHAPES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for backward in (False, True):
                p = problem(shape, ks, dtype=dtype, backward=backward)
                item = metal.staged_itemsize(dtype)
                assert p.threads_per_group <= 128
                assert 2 * p.KC * p.RS * 4 * item <= 12288
                if backward:
                    assert p.DS <= 16 or metal._slices(p.D, p.Dv, 16)[1] > 8
    assert [metal.staged_itemsize(t) for t in (torch.float32, torch.float16, torch.bfloat16)] == [4, 2, 4]
    wide = problem((2, 64, 64, 4, 64), 13, backward=True)
    gpu_profile("none")
    assert wide.DS == 16 and problem((2, 64, 64, 4, 64), 13, backward=True).DS == 32


def _check(shape, ks, dtype, seed):
    r = len(shape) - 3
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
    args = ([ks] * r, [1] * r, [1] * r, [False] * r, shape[-1] ** -0.5)
    out, lse = metal.attention_forward(q, k, v, *args)
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    ro, rl = reference_na(*ref, [ks] * r, [1] * r, [1] * r, [False] * r)
    torch.testing.assert_close(out.double(), ro, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.double(), rl, atol=TOL[dtype], rtol=TOL[dtype])
    dout = torch.randn(out.shape, generator=g).to(dtype)
    grads = metal.attention_backward(dout, None, q, k, v, out, lse, *args)
    (ro * dout.double()).sum().backward()
    for got, r_ in zip(grads, ref):
        torch.testing.assert_close(got.double(), r_.grad, atol=GRAD_TOL[dtype], rtol=GRAD_TOL[dtype])


@pytest.mark.parametrize("name", ["none", "apple-m1"])
def test_each_profile_is_exact(name, emulate, gpu_profile):
    """The same problems under the large tiles and under an M1's tiling, against float64: half rows
    staged as half, bfloat16 rows as float, every launch within the profile's limits."""
    gpu_profile(name)
    with emulator.counting() as counter:
        _check((1, 40, 2, 32), 5, torch.float32, 1)
        _check((1, 9, 11, 2, 16), 3, torch.float16, 2)
        _check((1, 30, 1, 24), 7, torch.bfloat16, 3)
    names = [s.kernel for s in counter.launches]
    assert any(n.endswith("_b4") for n in names) == (name != "none")
