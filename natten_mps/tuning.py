"""On-device autotuning of the Metal kernels' tilings, with a persistent cache.

Every Metal launch of neighborhood or dense attention (``backends.metal.attention_forward`` /
``attention_backward``) asks :func:`choose` for its tiling. A problem falls in a :class:`Bucket`
(op, rank, dtype, head-dim bucket, window class, size bucket); each bucket has candidate variants
(:data:`CANDIDATES`, single-choice deviations from the host's defaults: walk, head-dim slice,
SIMD-groups a tile, staging batch, fused backward; other kernel variants plug in with
:func:`register`). The first time a bucket is seen with tuning on, the candidates whose effective
tiling differs are each run once on the caller's own tensors (a result that differs from the
default's by more than the dtype's tolerance rejects the candidate), then timed, within
:data:`BUCKET_BUDGET_S` a bucket and :data:`PROCESS_BUDGET_S` a process; the fastest is kept and
written to a JSON cache keyed by the GPU's name, the torch version, the package version and the
shader source's hash, so the next process pays nothing.

Switches:

* ``NATTEN_MPS_TUNE=0|1`` or :func:`set_enabled`: tuning off (the documented defaults; CI) or on.
  Default: on for MPS tensors, off elsewhere (emulator, Metal-on-CUDA) unless turned on.
* ``NATTEN_MPS_TUNE_PIN=<candidate>`` (or ``forward=<c>,backward=<c>``) or :func:`pin`: use that
  candidate wherever it applies, tuning on or off.
* ``NATTEN_MPS_TUNE_CACHE=<path>``: the cache file (default ``~/.cache/natten_mps/tuning.json``).
* :func:`natten_mps.tune <tune>`: tune a list of problems ahead of time; :func:`report`: what was
  chosen in this process, for which bucket, and why.

Determinism: once a bucket's candidate is chosen, every run of it is bit-identical (the kernels use
no atomics). Another machine may choose another candidate: results then agree within the dtype's
tolerance, not bit for bit. Tuning runs inside the ops' implementations, below torch.compile's
graph (the ops are opaque custom ops): no graph break and no recompilation per choice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .backends import gpu_profile
from .backends import metal
from .backends.metal import Tiling
from .metal import runtime
from .version import __version__

ENV_TUNE = "NATTEN_MPS_TUNE"
ENV_PIN = "NATTEN_MPS_TUNE_PIN"
ENV_CACHE = "NATTEN_MPS_TUNE_CACHE"
BUCKET_BUDGET_S = 0.3            # timing budget of one bucket (the default is always timed)
PROCESS_BUDGET_S = 3.0           # timing budget of a process; past it, untuned buckets keep the defaults
TIMED_RUNS = 3                   # timed runs a candidate (median), after one checked run
CACHE_FORMAT = 1
OPS = ("forward", "backward")
# a candidate's result must match the default's within this (relative to the output's magnitude)
_CHECK_TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}


@dataclass(frozen=True)
class Bucket:
    """Problems that share a tuned choice. ``head_dim``: max(D, Dv) rounded up to a power of two
    (at least 8); ``window``: ``dense``, ``short`` (NA, inner window at most 8: the own-window walk's
    range) or ``long``; ``size``: ceil(log2(batch x heads x queries))."""
    op: str
    rank: int
    dtype: str
    head_dim: int
    window: str
    size: int

    def key(self) -> str:
        return f"{self.op}/r{self.rank}/{self.dtype}/d{self.head_dim}/{self.window}/s{self.size}"


@dataclass(frozen=True)
class Candidate:
    """A variant the tuner may choose: ``tiling`` overrides the host's choices
    (``backends.metal.Tiling``; its ``variant`` names a kernel family other host code selects, e.g. the
    dense simdgroup-matrix kernels); ``ops``: the ops it applies to; ``applies``: an extra test on
    the bucket (None: every bucket of those ops)."""
    name: str
    tiling: Tiling
    ops: Tuple[str, ...] = OPS
    applies: Optional[Callable[[Bucket], bool]] = None

    def fits(self, bucket: Bucket) -> bool:
        return bucket.op in self.ops and (self.applies is None or bool(self.applies(bucket)))


def _na(b: Bucket) -> bool:
    return b.window != "dense"


DEFAULT = Candidate("default", metal.DEFAULT_TILING)
CANDIDATES: List[Candidate] = [
    DEFAULT,
    Candidate("walk-union", Tiling(walk="union"), applies=_na),
    Candidate("walk-own", Tiling(walk="own"), applies=_na),
    *[Candidate(f"slice-{ds}", Tiling(ds=ds)) for ds in metal.SLICES],
    *[Candidate(f"simdgroups-{n}", Tiling(simdgroups=n)) for n in (1, 2, 4, 8)],
    Candidate("stage-1", Tiling(nb=1)),
    Candidate(f"stage-{metal.STAGE_BATCH}", Tiling(nb=metal.STAGE_BATCH)),
    Candidate("backward-split", Tiling(fused=False), ops=("backward",)),
    Candidate("backward-fused", Tiling(fused=True), ops=("backward",)),
    # the simdgroup-matrix kernels of flash_simdgroup.metal: dense attention, and 2-D NA
    Candidate("dense-simdgroup", Tiling(variant="simdgroup"), applies=lambda b: b.window == "dense"),
    Candidate("na2d-simdgroup", Tiling(variant="simdgroup"), applies=lambda b: b.window != "dense" and b.rank == 2),
]


def register(candidate: Candidate) -> None:
    """Add (or replace, by name) a candidate; e.g. the dense simdgroup-matrix kernels:
    ``register(Candidate("dense-simdgroup", Tiling(variant="simdgroup"), applies=lambda b: b.window == "dense"))``."""
    if not isinstance(candidate, Candidate):
        raise TypeError(f"register expects a Candidate, got {type(candidate).__name__}")
    for i, c in enumerate(CANDIDATES):
        if c.name == candidate.name:
            CANDIDATES[i] = candidate
            return
    CANDIDATES.append(candidate)


def candidate(name: str) -> Candidate:
    for c in CANDIDATES:
        if c.name == name:
            return c
    raise ValueError(f"unknown tuning candidate {name!r}; known: {[c.name for c in CANDIDATES]}")


def candidates_for(bucket: Bucket) -> List[Candidate]:
    return [c for c in CANDIDATES if c.fits(bucket)]


# ---- switches ------------------------------------------------------------------------------------

_lock = threading.RLock()
_enabled: Optional[bool] = None
_pins: Dict[Optional[str], str] = {}


def set_enabled(enabled: Optional[bool]) -> None:
    """Tuning on (True), off (False), or per ``NATTEN_MPS_TUNE`` / the device (None)."""
    global _enabled
    _enabled = None if enabled is None else bool(enabled)


def enabled(device: torch.device) -> bool:
    """Whether launches on ``device`` tune: :func:`set_enabled`, else ``NATTEN_MPS_TUNE``, else on for
    MPS only."""
    if _enabled is not None:
        return _enabled
    env = os.environ.get(ENV_TUNE, "")
    if env not in ("", "0", "1"):
        raise ValueError(f"{ENV_TUNE} must be '0' or '1', got {env!r}")
    if env:
        return env == "1"
    return device.type == "mps"


def pin(name: Optional[str], op: Optional[str] = None) -> None:
    """Use candidate ``name`` for every bucket it applies to (of ``op`` only, when given), tuning on
    or off; ``pin(None)`` (with the same ``op``) removes the pin."""
    if op not in (None,) + OPS:
        raise ValueError(f"pin: op must be one of {OPS} or None, got {op!r}")
    if name is None:
        _pins.pop(op, None)
        return
    candidate(name)
    _pins[op] = name


def unpin() -> None:
    """Remove every pin set with :func:`pin`."""
    _pins.clear()


def _pinned(op: str) -> Optional[str]:
    name = _pins.get(op) or _pins.get(None)
    if name:
        return name
    env = os.environ.get(ENV_PIN, "").strip()
    if not env:
        return None
    if "=" not in env:
        candidate(env)
        return env
    for part in env.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in OPS:
            raise ValueError(f"{ENV_PIN}: expected <candidate> or forward=<c>,backward=<c>, got {env!r}")
        if key.strip() == op:
            candidate(value.strip())
            return value.strip()
    return None


def set_budget(bucket_s: Optional[float] = None, process_s: Optional[float] = None) -> None:
    """Change the timing budgets (seconds)."""
    global BUCKET_BUDGET_S, PROCESS_BUDGET_S
    if bucket_s is not None:
        BUCKET_BUDGET_S = float(bucket_s)
    if process_s is not None:
        PROCESS_BUDGET_S = float(process_s)


# ---- timing --------------------------------------------------------------------------------------

Timer = Callable[[str, Callable[[], object], torch.device], Tuple[float, float]]


def _synchronize(device: torch.device) -> None:
    if device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "cuda":
        torch.cuda.synchronize(device)


def device_timer(name: str, run: Callable[[], object], device: torch.device) -> Tuple[float, float]:
    """(median seconds a run, seconds spent): TIMED_RUNS runs, each synchronised (the candidate ran
    once before, so its pipeline exists)."""
    start = time.perf_counter()
    times = []
    for _ in range(TIMED_RUNS):
        t0 = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), time.perf_counter() - start


_timer: Timer = device_timer


def set_timer(timer: Optional[Timer]) -> None:
    """Replace the timer (tests: a fake clock that makes a given candidate fastest). ``timer(name,
    run, device)`` returns (seconds a run, seconds of budget spent). None restores the device timer."""
    global _timer
    _timer = timer or device_timer


# ---- cache ---------------------------------------------------------------------------------------

def cache_path() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "natten_mps" / "tuning.json"


_shader_hash: Optional[str] = None


def shader_hash() -> str:
    global _shader_hash
    if _shader_hash is None:
        _shader_hash = hashlib.sha256(runtime.shader_source(metal.ATTENTION_SHADER).encode()).hexdigest()[:16]
    return _shader_hash


_gpu_names: Dict[tuple, str] = {}


def gpu_name(device: torch.device) -> str:
    """The GPU a choice was made on: the MPS device's name, the CUDA device's, or the emulator's
    GPU profile."""
    if device.type not in ("mps", "cuda"):
        return f"emulator:{gpu_profile.profile_for(device).name}"
    key = (device.type, device.index)
    name = _gpu_names.get(key)
    if name is None:
        if device.type == "mps":
            try:
                name = torch.backends.mps.get_name() or "mps"
            except Exception:             # older torch: no device query
                name = "mps"
        else:
            name = torch.cuda.get_device_name(device)
        _gpu_names[key] = name
    return name


def cache_key(bucket: Bucket, device: torch.device) -> str:
    return "|".join([gpu_name(device), f"torch {torch.__version__}", f"natten_mps {__version__}",
                     f"shader {shader_hash()}", f"profile {gpu_profile.profile_for(device).name}", bucket.key()])


_warned: set = set()


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _read_cache() -> Dict[str, dict]:
    """The cache file's entries; a missing file is empty, an unreadable or malformed one is ignored
    (one warning) and replaced at the next write."""
    path = cache_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        _warn_once(("read", str(path)), f"natten_mps tuning cache {path} unreadable ({e}); ignored")
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
            raise ValueError("not a natten_mps tuning cache of format %d" % CACHE_FORMAT)
    except ValueError as e:
        _warn_once(("corrupt", str(path)), f"natten_mps tuning cache {path} is corrupt ({e}); ignored")
        return {}
    return data["entries"]


def _write_entry(key: str, entry: dict) -> None:
    path = cache_path()
    try:
        entries = _read_cache()
        entries[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        _warn_once(("write", str(path)), f"natten_mps tuning cache {path} not written ({e})")


def _valid_entry(entry, bucket: Bucket) -> Optional[Candidate]:
    """The candidate a cache entry names, if it is still a candidate of the bucket with the same
    tiling (entries of a changed registry, or hand-edited ones, are not trusted)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("variant"), str):
        return None
    try:
        cand = candidate(entry["variant"])
    except ValueError:
        return None
    if not cand.fits(bucket) or entry.get("tiling") != dataclasses.asdict(cand.tiling):
        return None
    return cand


# ---- choosing ------------------------------------------------------------------------------------

@dataclass
class Choice:
    bucket: Bucket
    candidate: Candidate
    source: str                   # "cache", "tuned", "pinned", "default"
    reason: str
    times_ms: Dict[str, float] = dataclasses.field(default_factory=dict)


_choices: Dict[str, Choice] = {}          # cache key (or "pin|..."), this process
_spent_s = 0.0


def bucket_of(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size, dense: bool) -> Bucket:
    rank = q.dim() - 3
    width = max(q.shape[-1], v.shape[-1], 8)
    head_dim = 1 << (width - 1).bit_length()
    if dense:
        window = "dense"
    else:
        window = "short" if int(list(kernel_size)[-1]) <= 8 else "long"
    work = q.shape[0] * q.shape[-2] * max(1, math.prod(q.shape[1:-2]))
    return Bucket(op, rank, str(q.dtype).replace("torch.", ""), head_dim, window, (work - 1).bit_length())


def _signature(op: str, cand: Candidate, q, k, v, kernel_size, dilation, is_causal, dense) -> tuple:
    """The launch configuration ``cand`` gives this problem (candidates that give the same one are
    timed once)."""
    rank = q.dim() - 3
    stride = [1] * len(list(kernel_size))
    backward = op == "backward"
    args = (q, k, v, kernel_size, stride, dilation, is_causal, dense, 0)
    probs = [metal._Problem(*args, backward=backward, tiling=cand.tiling)]
    if backward:
        probs.append(metal._Problem(*args, tile_keys=True, backward=True, tiling=cand.tiling))
    sig = tuple((p.DS, p.NG, tuple(p.u), tuple(p.a), p.NB, p.own_walk, p.KC) for p in probs)
    fused = backward and metal._fuses_backward(probs[0], probs[1])
    return (rank, sig, fused, cand.tiling.variant)


def _close(a, b, dtype) -> bool:
    xs = a if isinstance(a, (tuple, list)) else (a,)
    ys = b if isinstance(b, (tuple, list)) else (b,)
    tol = _CHECK_TOL.get(dtype, 1e-3)
    for x, y in zip(xs, ys):
        if x is None or y is None:
            if (x is None) != (y is None):
                return False
            continue
        x, y = x.detach().to("cpu", torch.float32), y.detach().to("cpu", torch.float32)   # (MPS has no float64)
        scale = float(y[torch.isfinite(y)].abs().max()) if torch.isfinite(y).any() else 1.0
        if not torch.allclose(x, y, rtol=tol, atol=tol * max(scale, 1.0), equal_nan=True):
            return False
    return True


def choose(op: str, q, k, v, kernel_size, dilation, is_causal, dense: bool,
           run: Callable[[], object]) -> Optional[Tiling]:
    """The tiling for this launch (None: the host's defaults). ``run`` replays the launch (the tuner
    times candidates with it, inside ``metal.force_tiling``)."""
    pinned = _pinned(op)
    if pinned is None and not enabled(q.device):
        return None
    bucket = bucket_of(op, q, k, v, kernel_size, dense)
    if pinned is not None:
        cand = candidate(pinned)
        key = f"pin|{bucket.key()}|{pinned}"
        if key not in _choices:
            fits = cand.fits(bucket)
            _choices[key] = Choice(bucket, cand if fits else DEFAULT, "pinned",
                                   f"pinned to {pinned}" + ("" if fits else " (not a candidate here: defaults)"))
        return _choices[key].candidate.tiling
    key = cache_key(bucket, q.device)
    with _lock:
        got = _choices.get(key)
        if got is None:
            got = _lookup(key, bucket) or _tune(key, bucket, op, q, k, v, kernel_size, dilation, is_causal, dense, run)
            _choices[key] = got
    return got.candidate.tiling


def _lookup(key: str, bucket: Bucket) -> Optional[Choice]:
    entries = _read_cache()
    if key not in entries:
        return None
    cand = _valid_entry(entries[key], bucket)
    if cand is None:
        _warn_once(("stale", key), f"natten_mps tuning cache entry for {bucket.key()} is not a valid "
                                   f"candidate any more; ignored (re-tuning)")
        return None
    times = entries[key].get("times_ms")
    return Choice(bucket, cand, "cache", f"cached in {cache_path()}",
                  dict(times) if isinstance(times, dict) else {})


def _tune(key, bucket, op, q, k, v, kernel_size, dilation, is_causal, dense, run) -> Choice:
    global _spent_s
    if _spent_s >= PROCESS_BUDGET_S:
        return Choice(bucket, DEFAULT, "default", f"process tuning budget ({PROCESS_BUDGET_S} s) spent")
    seen, todo = set(), []
    for cand in candidates_for(bucket):
        try:
            sig = _signature(op, cand, q, k, v, kernel_size, dilation, is_causal, dense)
        except Exception:               # a candidate the host cannot lay out here
            continue
        if sig not in seen:
            seen.add(sig)
            todo.append(cand)
    times: Dict[str, float] = {}
    notes: List[str] = []
    reference = None
    bucket_spent = 0.0
    complete = True
    for cand in todo:
        if times and (bucket_spent >= BUCKET_BUDGET_S or _spent_s >= PROCESS_BUDGET_S):
            complete = False
            notes.append(f"budget spent after {len(times)} of {len(todo)} candidates")
            break
        t0 = time.perf_counter()
        try:
            with metal.force_tiling(cand.tiling):
                result = run()                      # the checked (and warm-up) run
                _synchronize(q.device)
                checked = time.perf_counter() - t0
                if reference is None:
                    reference = result
                elif not _close(result, reference, q.dtype):
                    notes.append(f"{cand.name} rejected: result differs from the default's")
                    continue
                seconds, spent = _timer(cand.name, run, q.device)
        except Exception as e:                  # noqa: BLE001 - a failing variant is never chosen
            notes.append(f"{cand.name} rejected: {type(e).__name__}: {e}")
            continue
        if _timer is device_timer:                  # the checked run's time counts too (an injected
            spent += checked                        # clock accounts for everything itself)
        bucket_spent += max(spent, 0.0)
        _spent_s += max(spent, 0.0)
        times[cand.name] = seconds * 1e3
    if not times:
        return Choice(bucket, DEFAULT, "default", "; ".join(notes) or "no candidate ran")
    best = min(times, key=lambda n: (times[n], n != "default"))
    chosen = candidate(best)
    reason = (f"fastest of {len(times)} timed ({times[best]:.4g} ms; default {times.get('default', float('nan')):.4g} ms)"
              + ("; " + "; ".join(notes) if notes else ""))
    _write_entry(key, {"variant": best, "tiling": dataclasses.asdict(chosen.tiling), "times_ms": times,
                       "complete": complete, "bucket": bucket.key(),
                       "chosen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return Choice(bucket, chosen, "tuned", reason, times)


def forget() -> None:
    """Forget this process's choices and spent budget (the cache file stays)."""
    global _spent_s
    with _lock:
        _choices.clear()
        _spent_s = 0.0


def choices() -> List[Choice]:
    """This process's choices, in the order they were made."""
    return list(_choices.values())


def report(file=None) -> str:
    """Print (to ``file``, default stdout) and return what was chosen per bucket in this process and
    why: the switches, the cache file, and per bucket its candidate, source and timings."""
    dev = torch.device("mps") if runtime.mps_available() else torch.device("cpu")
    lines = [f"natten_mps tuning: {'on' if _safe_enabled(dev) else 'off'} on {dev.type} "
             f"({ENV_TUNE}={os.environ.get(ENV_TUNE, '')!r}), pins {dict(_pins) or os.environ.get(ENV_PIN) or 'none'}",
             f"cache: {cache_path()}; budgets {BUCKET_BUDGET_S} s a bucket, {PROCESS_BUDGET_S} s a process "
             f"({_spent_s:.3f} s spent)"]
    if not _choices:
        lines.append("no bucket chosen yet")
    for c in _choices.values():
        timing = ", ".join(f"{n} {t:.4g} ms" for n, t in sorted(c.times_ms.items(), key=lambda kv: kv[1]))
        lines.append(f"{c.bucket.key()}: {c.candidate.name} [{c.source}] {c.reason}" + (f" ({timing})" if timing else ""))
    text = "\n".join(lines)
    print(text, file=file)
    return text


def _safe_enabled(device) -> bool:
    try:
        return enabled(device)
    except ValueError:
        return False


def tune(*problems, device=None, dtype=torch.float16, backward: bool = True) -> List[Choice]:
    """Tune problems ahead of time (tuning on for the call): each problem is a dict with ``shape``
    (``[B, *L, H, D]`` heads-last) and optionally ``kernel_size`` (int or per axis; omitted or None:
    dense attention), ``dilation``, ``is_causal``, ``dtype``, ``dv``. Runs the forward (and the
    backward) once on random inputs on ``device`` (default: MPS when available, else the CPU
    through the emulator, which must be on). Returns the choices made (also in :func:`report`)."""
    if device is None:
        device = torch.device("mps") if runtime.mps_available() else torch.device("cpu")
    device = torch.device(device)
    probe = torch.empty(0, device=device)
    if not runtime.runs_metal(probe):
        raise ValueError(f"tune: device {device} does not run the Metal kernels (MPS; CPU under "
                         f"set_emulation(True); CUDA under set_metal_on_cuda(True))")
    before = len(_choices)
    prev = _enabled
    set_enabled(True)
    try:
        for p in problems:
            if not isinstance(p, dict) or "shape" not in p:
                raise TypeError(f"tune: each problem must be a dict with a 'shape', got {p!r}")
            shape = [int(x) for x in p["shape"]]
            if len(shape) < 4 or len(shape) > 6:
                raise ValueError(f"tune: shape must be [B, *L, H, D] with 1-3 spatial axes, got {shape}")
            rank = len(shape) - 3
            dt = p.get("dtype", dtype)
            dense = p.get("kernel_size") is None
            ks = [1] * rank if dense else _per_axis(p["kernel_size"], rank, "kernel_size")
            dil = [1] * rank if dense else _per_axis(p.get("dilation", 1), rank, "dilation")
            causal = [bool(c) for c in _per_axis(p.get("is_causal", False), rank, "is_causal")]
            if dense:
                ks, dil, causal = [1], [1], causal[:1]
            g = torch.Generator().manual_seed(0)
            q = torch.randn(shape, generator=g).to(device=device, dtype=dt)
            v = q if p.get("dv") is None else torch.randn(shape[:-1] + [int(p["dv"])], generator=g).to(device, dt)
            scale = shape[-1] ** -0.5
            if dense:
                q, v = q.flatten(1, rank), v.flatten(1, rank)
            if dense:
                out, lse = metal.dense_forward(q, q, v, causal[0], scale)
                if backward:
                    metal.dense_backward(torch.randn_like(out), None, q, q, v, out, lse, causal[0], scale)
            else:
                out, lse = metal.na_forward(q, q, v, ks, [1] * len(ks), dil, causal, scale)
                if backward:
                    metal.na_backward(torch.randn_like(out), None, q, q, v, out, lse, ks, [1] * len(ks), dil,
                                      causal, scale)
    finally:
        set_enabled(prev)
    return list(_choices.values())[before:]


def _per_axis(value, rank: int, name: str) -> List:
    if isinstance(value, (list, tuple)):
        if len(value) != rank:
            raise ValueError(f"tune: {name} needs {rank} values, got {list(value)}")
        return list(value)
    return [value] * rank
