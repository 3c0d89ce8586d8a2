"""Metal implementations of the natten_mps ops (MPS; CPU under emulation; CUDA through the MSL -> CUDA back end).

Each function takes the op's public layout (heads-last) and launches kernels of
``shaders/natten/attention.metal`` through the shared runtime: one tiled kernel family for
neighborhood attention and dense attention (the same kernels with the dense window rule), forward
(one dispatch, additional keys included) and backward (dQ, then dK/dV, then dK/dV of the additional
keys: at most three dispatches, no atomics). Configurations no kernel covers report
``supported(...) == False`` and the op layer runs the pure-PyTorch path instead.

Tiling (see the shader's header): a threadgroup is at most the GPU profile's SIMD-groups (4 on Apple
GPUs, 128 threads); ``NG`` lanes share
a query (or key) and split the head dimension in slices of ``DS`` (4, 8, 16 or 32) floats; a SIMD-group
owns ``32 / NG`` neighbouring positions, shaped as square as the extents allow; K/V (or Q/dO)
chunks of ``KC`` tokens are staged in the GPU profile's chunk bytes (at most the shader's
``kStageBytes``), ``NB`` rows a thread at once (4 for small problems, whose threads have nothing to
hide device latency behind; 1 otherwise). Every choice reads the GPU profile
(``backends.gpu_profile``: threadgroup target, SIMD-groups a tile, chunk bytes, backward slice cap),
so the emulator chooses as a Mac does; :class:`Tiling` overrides single choices
(:func:`force_tiling`, the tuner's candidates, ``natten_mps.tuning``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import re
import threading
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..lru import SignatureCache
from ..metal import msl, runtime
from . import fallback, gpu_profile, metal_flash

ATTENTION_SHADER = "natten/attention.metal"
MAX_HEAD_DIM = 256
SIMDGROUPS = 8                   # SIMD-groups a tile starts with on the "none" profile (256 threads)
STAGE_BYTES = 12288              # the shader's declared chunk (kStageBytes): every profile's cap
MAX_CHUNK = 64
GEOM_FIXED = 52                  # entries of the geom buffer before varlen's per-sample extents (attn_tile.h)
SLICES = (4, 8, 16, 32)          # head-dim slice widths DS the kernels are instantiated for
NARROW_SLICES = (16, 8, 4)       # tried in turn when a problem has too few tiles for the GPU
BATCHED_SLICES = (4, 8)          # slice widths also instantiated with NB = 4 staged rows a thread ("_b4")
STAGE_BATCH = 4
FUSED_MAX_HALO = 2.0             # the single-dispatch backward's bound on queries staged per key of a tile
_INT32_MAX = 2 ** 31 - 1
_DTYPE_SUFFIX = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


_GEOM_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
_GEOM_CACHE_SIZE = 256


def _geom_buffer(values: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The fixed part of a ``geom`` buffer on ``device``, made once per distinct problem and kept
    (least recently used first out): a call of a known shape uploads nothing, so the host neither
    waits for a copy to the GPU nor encodes one before its launches. The kernels only read it."""
    key = (device.type, device.index, values)
    buf = _GEOM_CACHE.get(key)
    if buf is None:
        buf = torch.tensor(values, dtype=torch.int32, device=device)
        _GEOM_CACHE[key] = buf
        if len(_GEOM_CACHE) > _GEOM_CACHE_SIZE:
            _GEOM_CACHE.popitem(last=False)
    else:
        _GEOM_CACHE.move_to_end(key)
    return buf


def supported(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether the kernels cover these tensors: float32/16/bf16, head dims <= 256, non-empty, and
    every tensor under 2^31 elements (the kernels index with 32-bit integers)."""
    q = tensors[0]
    if q.dtype not in _DTYPE_SUFFIX or q.dim() > 6:
        return False
    for t in tensors:
        if t is not None and (t.dtype != q.dtype or t.shape[-1] > MAX_HEAD_DIM or not 0 < t.numel() <= _INT32_MAX):
            return False
    return runtime.family_available(ATTENTION_SHADER, _DTYPE_SUFFIX[q.dtype], q.device.type)


def na_forward_supported(q: torch.Tensor, v: torch.Tensor) -> bool:
    return supported(q, v)


def _new_output(shape, dtype, device) -> torch.Tensor:
    # Under emulation (and on request elsewhere), outputs are poisoned so that a kernel that forgets
    # to write shows up as NaN.
    if runtime.poison_outputs(device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def _pad3(values, fill) -> List[int]:
    values = [int(x) for x in values]
    return [fill] * (3 - len(values)) + values


def _slices(D: int, Dv: int, ds: Optional[int] = None) -> Tuple[int, int]:
    """(DS, NG): slice width and lanes per position covering max(D, Dv)."""
    width = max(D, Dv)
    ds = ds or (16 if width <= 16 else 32)
    ng = 1
    while ng * ds < width:
        ng *= 2
    return ds, ng


def _simdgroups(device: torch.device, own_walk: bool = False) -> int:
    """SIMD-groups a tile starts with, from the GPU profile (``gpu_profile.profile_for``): 4 (128
    threads) on Apple GPUs (MLX's attention kernels and MFA use 64-128 threads; a core wants about 24
    resident SIMD-groups, docs/tuning.md); on CUDA 2 for the union walk and 4 for the own-window walk
    (the proxy's per-kernel sweep, ``benchmarks/experiments/tile_sweep_cuda.py --per-kernel``,
    results/tile_sweep_h200_2026-12-02_4f81dd1.txt: dQ and dK/dV 2-10% faster with 2 than with 4, the own walk's
    SIMD-groups stack on the outer axes so more of them share a staged box); 8 on the ``none``
    profile (256 threads, the fewest device bytes per token)."""
    prof = gpu_profile.profile_for(device)
    return prof.simdgroups_own if own_walk else prof.simdgroups


def _target_threadgroups(device: torch.device) -> int:
    """Threadgroups that keep every GPU core busy; below it the tiles shrink (fewer SIMD-groups per
    tile, then narrower slices) and the small-problem kernels (``_b4``) are taken. From the GPU
    profile: on Apple GPUs cores x the threadgroups a core keeps resident (by threadgroup memory and
    by resident SIMD-groups); on CUDA 1.5 a multiprocessor (at 1-D L=256 the per-kernel sweep
    measured tiles of 2-4 SIMD-groups 20-25% faster than tiles of one); 0 on the ``none`` profile."""
    return gpu_profile.profile_for(device).target_threadgroups()


@functools.lru_cache(maxsize=None)
def shader_stage_bytes() -> int:
    """``kStageBytes`` as the shader declares it (the threadgroup array every kernel allocates)."""
    m = re.search(r"kStageBytes\s*=\s*(\d+)", runtime.shader_source(ATTENTION_SHADER))
    return int(m.group(1)) if m else STAGE_BYTES


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Overrides of the host's tiling choices (None: the host's default choice).

    ``walk``: ``"own"`` or ``"union"`` (the NA kernels' walk); ``ds``: head-dim slice (4, 8, 16, 32;
    ignored where it cannot cover the head dim in 8 lanes); ``simdgroups``: SIMD-groups a tile starts
    with (1, 2, 4, 8; still shrunk for small problems); ``nb``: rows a thread stages at once (1, or
    STAGE_BATCH at slices 4 and 8); ``fused``: the single-dispatch backward (taken only where both
    tilings use the small-problem kernels at one slice and threadgroup size); ``variant``: the name
    of a kernel family other host code selects by it (e.g. the dense simdgroup-matrix kernels;
    None: the scalar kernels)."""
    walk: Optional[str] = None
    ds: Optional[int] = None
    simdgroups: Optional[int] = None
    nb: Optional[int] = None
    fused: Optional[bool] = None
    variant: Optional[str] = None

    def __post_init__(self):
        if self.walk not in (None, "own", "union"):
            raise ValueError(f"Tiling.walk must be 'own', 'union' or None, got {self.walk!r}")
        if self.ds not in (None,) + SLICES:
            raise ValueError(f"Tiling.ds must be one of {SLICES} or None, got {self.ds!r}")
        if self.simdgroups not in (None, 1, 2, 4, 8):
            raise ValueError(f"Tiling.simdgroups must be 1, 2, 4, 8 or None, got {self.simdgroups!r}")
        if self.nb not in (None, 1, STAGE_BATCH):
            raise ValueError(f"Tiling.nb must be 1, {STAGE_BATCH} or None, got {self.nb!r}")


DEFAULT_TILING = Tiling()
_forced = threading.local()


@contextlib.contextmanager
def force_tiling(tiling: Optional[Tiling]):
    """Within the block, every launch on this thread uses ``tiling``'s overrides (experiments, tests,
    the tuner's timing runs); ``None`` leaves the host's choices (and the tuner's) as they are."""
    prev = getattr(_forced, "tiling", None)
    _forced.tiling = tiling if tiling is not None else prev
    try:
        yield
    finally:
        _forced.tiling = prev


def forced_tiling() -> Optional[Tiling]:
    """The tiling of the innermost :func:`force_tiling` block on this thread (None outside)."""
    return getattr(_forced, "tiling", None)


def _tiling_for(op: str, q, k, v, kernel_size, dilation, is_causal, dense: bool,
                run: Callable[[], object]) -> Tiling:
    """The tiling a launch uses: a forced one, else the tuner's choice for the problem's bucket
    (``natten_mps.tuning``; ``run`` replays the call to time candidates), else the defaults."""
    forced = forced_tiling()
    if forced is not None:
        return forced
    from .. import tuning
    return tuning.choose(op, q, k, v, kernel_size, dilation, is_causal, dense, run) or DEFAULT_TILING


def _grow(count: int, sizes: List[int], extents: Sequence[int], active: Sequence[int],
          outer_first: bool = False) -> List[int]:
    """Double entries of ``sizes`` on the ``active`` axes until their product reaches ``count``,
    always the smallest one that still fits its extent (inner axes first on ties, or outer ones)."""
    sizes = list(sizes)
    while True:
        prod = sizes[0] * sizes[1] * sizes[2]
        if prod >= count:
            return sizes
        fits = [ax for ax in active if sizes[ax] * 2 <= max(extents[ax], 1)] or [active[-1]]
        ax = min(fits, key=lambda a: (sizes[a], a if outer_first else -a))
        sizes[ax] *= 2


def _tiling(rank: int, extents: Sequence[int], ng: int, simdgroups: int,
            rows: bool = False) -> Tuple[List[int], List[int]]:
    """(u, a): positions per SIMD-group and SIMD-groups per threadgroup, per axis (3-D padded),
    all powers of two (the kernels shift by them). ``rows``: each SIMD-group owns a run of the inner
    axis (the own-window walk), and SIMD-groups stack on the outer axes first."""
    active = list(range(3 - rank, 3))
    if rows:
        u = [1, 1, 32 // ng]
    else:
        u = _grow(32 // ng, [1, 1, 1], extents, active)
    tile_ext = [max(1, -(-e // ui)) for e, ui in zip(extents, u)]
    a = _grow(simdgroups, [1, 1, 1], tile_ext, active, outer_first=rows)
    return u, a


def _walk_mode() -> Optional[str]:
    """``NATTEN_MPS_METAL_WALK``: ``own`` or ``union`` forces the NA kernels' walk (experiments)."""
    mode = os.environ.get("NATTEN_MPS_METAL_WALK")
    if mode not in (None, "", "own", "union"):
        raise ValueError(f"NATTEN_MPS_METAL_WALK must be 'own' or 'union', got {mode!r}")
    return mode or None


def _chunk(row_vectors: int, itemsize: int, stage_bytes: int = STAGE_BYTES) -> int:
    """Tokens per staged chunk: two arrays (keys and values, or queries and output gradients) of
    rows ``row_vectors`` 4-vectors apart in ``stage_bytes`` (at most STAGE_BYTES, the shader's)."""
    stage_bytes = min(stage_bytes, STAGE_BYTES)
    return max(1, min(MAX_CHUNK, stage_bytes // (2 * 4 * row_vectors * itemsize)))


def staged_itemsize(dtype: torch.dtype) -> int:
    """Bytes of a staged element (attention.metal, ``Staged``): float32 and bfloat16 rows are staged
    as float (bfloat unpacked once, at staging: Apple GPUs before the M3 have no native bfloat
    conversion), half rows as half (16-bit operands convert for free)."""
    return 2 if dtype == torch.float16 else 4


class _Problem:
    """Geometry of one launch family: extents padded to 3-D, window parameters, tiling."""

    def __init__(self, q, k, v, kernel_size, stride, dilation, is_causal, dense, extra_tokens,
                 lq=None, lk=None, tile_keys=False, backward=False, tiling: Optional[Tiling] = None):
        self.B, self.H, self.D = q.shape[0], q.shape[-2], q.shape[-1]
        self.Hkv, self.Dv = k.shape[-2], v.shape[-1]
        lq = list(q.shape[1:-2]) if lq is None else list(lq)
        lk = list(k.shape[1:-2]) if lk is None else list(lk)
        self.rank = len(lq)
        self.Lq, self.Lk = _pad3(lq, 1), _pad3(lk, 1)
        self.K = _pad3(kernel_size, 1)
        self.S = _pad3(stride, 1)
        self.DIL = _pad3(dilation, 1)
        self.C = _pad3([int(bool(c)) for c in is_causal], 0)
        self.dense = bool(dense)
        self.E = int(extra_tokens)
        self.space = self.Lk if tile_keys else self.Lq
        self.heads = self.Hkv if tile_keys else self.H
        self.tiling = tiling = tiling or forced_tiling() or DEFAULT_TILING
        self.profile = profile = gpu_profile.profile_for(q.device)
        group_ext = [-(-n // d) for n, d in zip(self.space, self.DIL)]
        target = _target_threadgroups(q.device)
        mode = tiling.walk or _walk_mode()
        ds = self._cheaper_slice(group_ext)
        own = self._wants_own_walk(mode, group_ext, ds)
        if own:
            ds = self._own_slice()
        if backward and profile.backward_slice:
            ds = self._capped_slice(ds, profile.backward_slice)
        if tiling.ds is not None and _slices(self.D, self.Dv, tiling.ds)[1] <= 8:
            ds = tiling.ds
        start = tiling.simdgroups or _simdgroups(q.device, own)
        # the compiled pipelines' own thread limit (can be < 1024 on Apple GPUs): never more SIMD-groups
        fits = runtime.thread_limit(ATTENTION_SHADER, q.device.type, _DTYPE_SUFFIX[q.dtype],
                                    contains=f"_r{self.rank}") // 32
        if fits < 1:
            raise runtime.FamilyUnavailableError(f"{ATTENTION_SHADER}: no pipeline thread limit fits a SIMD-group")
        while start > fits:
            start //= 2
        # Fewer SIMD-groups a tile first, then narrower slices (more lanes a position, so fewer
        # positions a SIMD-group): small problems spread over more, shorter SIMD-groups.
        choices = [(ds, a) for a in (8, 4, 2, 1) if a <= start]
        if tiling.ds is None:
            choices += [(w, 1) for w in NARROW_SLICES]
        self.NG = 0
        for ds, simdgroups in choices:
            width, lanes = _slices(self.D, self.Dv, ds)
            if lanes > 8:                         # this slice cannot cover the head dim in 8 lanes
                continue
            self.DS, self.NG = width, lanes
            # the own-window walk needs a SIMD-group's run (32 / NG positions) on the inner axis
            self.own_walk = own and group_ext[2] >= 32 // self.NG
            self.u, self.a = _tiling(self.rank, group_ext, self.NG, simdgroups, rows=self.own_walk)
            if self.tiles() >= target:
                break
        assert self.NG <= 8 and self.DS in SLICES, (self.NG, self.DS)
        self.NB = self._stage_batch(target)
        # Staged rows are NG x DS / 4 4-vectors apart; one more for the own-window walk, whose lanes
        # read neighbouring rows at once (without the skew rows 2^k vectors apart share banks).
        self.RS = self.NG * self.DS // 4 + int(self.own_walk)
        # chunks sized for the staged element type (half as half, else float)
        self.KC = _chunk(self.RS, staged_itemsize(q.dtype), profile.stage_bytes)
        self.threads_per_group = 32 * self.a[0] * self.a[1] * self.a[2]

    def _capped_slice(self, ds: int, cap: int) -> int:
        """``ds`` narrowed to ``cap`` (the backward's per-lane state: dK/dV holds 4 x DS floats a
        lane, dQ 3 x DS), or the narrowest slice above the cap that covers the head dim in 8 lanes."""
        width = min(ds, cap)
        while _slices(self.D, self.Dv, width)[1] > 8:
            width *= 2
        return width

    def _stage_batch(self, target: int) -> int:
        """Rows a thread stages at once (attention.metal, stage_keys): STAGE_BATCH for small problems
        (fewer tiles than twice the GPU's threadgroup target: no tile waits for a free core, so
        nothing hides a thread's device-memory latency) at the slices instantiated for it, else 1;
        the tiling's ``nb`` where given (STAGE_BATCH only at those slices)."""
        if self.tiling.nb == 1 or (self.tiling.nb == STAGE_BATCH and self.DS in BATCHED_SLICES):
            return self.tiling.nb
        return STAGE_BATCH if self.DS in BATCHED_SLICES and self.tiles() < 2 * target else 1

    def _wants_own_walk(self, mode: Optional[str], group_ext, ds: int) -> bool:
        """Whether lanes should walk their own windows (attention.metal, ``Run``): neighbourhood
        attention with short windows (at most 8 on the inner axis) where the union walk, at slice
        ``ds``, would visit at least 1.4x the steps of a window (its masked steps). The own walk's
        lanes read different staged rows at once (rows are skewed across banks, ``RS``); with long
        windows the union walk's broadcast reads won on the proxy (tile_sweep_h200_2026-12-02_4f81dd1.txt: 1-D K=63,
        2-D K=13), with short ones the own walk (1-D 256 K=7, 2-D 32^2 and 64^2 K=7, 3-D K=5
        backward: 3-25% faster kernels)."""
        if self.dense:
            return False
        if mode is not None:
            return mode == "own"
        if self.K[2] > 8:
            return False
        _, ng = _slices(self.D, self.Dv, ds)
        u, _ = _tiling(self.rank, group_ext, ng, 1)
        union = own = 1
        for ax in range(3):
            extent = max(group_ext[ax], 1)
            union *= min(u[ax] + self.K[ax] - 1, extent)
            own *= min(self.K[ax], extent)
        return union >= 1.4 * own

    def _own_slice(self) -> int:
        """Slice width for the own-window walk: narrow (8), so a SIMD-group's 32 / NG positions, each
        reading its own row, are few; 16 in 3-D, where the staged box's halo on three axes wants
        more positions a tile (the proxy's per-kernel sweep: 2-D 64^2 backward 20% faster at 8 than
        the union walk, 3-D best at 16)."""
        ds = 16 if self.rank == 3 else 8
        while _slices(self.D, self.Dv, ds)[1] > 8:     # wide head dims: the narrowest that fits 8 lanes
            ds *= 2
        return ds

    def _cheaper_slice(self, group_ext) -> int:
        """Slice width (16 or 32) with the least lane work: a lane walks the union of its
        SIMD-group's windows, ``union x NG x DS`` multiply-adds per position, plus a shuffle level
        per doubling of NG (weighted 0.5, from the proxy's timings). Narrow slices mean smaller sub-tiles, so smaller unions."""
        if max(self.D, self.Dv) <= 16:
            return 16
        best = None
        for ds in (32, 16):
            _, ng = _slices(self.D, self.Dv, ds)
            if ng > 8:
                continue
            u, _ = _tiling(self.rank, group_ext, ng, 1)
            union = 1
            for ax in range(3):
                span = self.Lk[ax] if self.dense else u[ax] + self.K[ax] - 1
                union *= min(span, max(group_ext[ax], 1) if not self.dense else span)
            cost = union * ng * ds * (1 + 0.5 * (ng.bit_length() - 1))
            if best is None or cost < best[0]:
                best = (cost, ds)
        return best[1]

    def tiles_per_axis(self) -> List[int]:
        """Tiles along each axis of the tiled space (its longest dilation group)."""
        return [_ceil_div(_ceil_div(self.space[ax], self.DIL[ax]), self.u[ax] * self.a[ax]) for ax in range(3)]

    def query_halo(self) -> float:
        """Queries whose windows reach a tile of keys (stride-1 estimate: the tile grown by K - 1 on
        each axis, within the group), per key of the tile."""
        ext = [_ceil_div(n, d) for n, d in zip(self.space, self.DIL)]
        box = tile = 1
        for ax in range(3):
            t = min(self.u[ax] * self.a[ax], ext[ax])
            tile *= t
            box *= min(t + self.K[ax] - 1, ext[ax]) if not self.dense else self.Lq[ax]
        return box / tile

    def tiles(self) -> int:
        """Threadgroups of a launch: ``grid()``'s product."""
        x, y, z = self.grid()
        return x * y * z

    def grid(self) -> Tuple[int, int, int]:
        """Threadgroups per grid axis (attn_tile.h, locate_tile): x the tiles of one (batch, head,
        dilation group), y the heads, z the batch index and dilation group."""
        x = 1
        for t in self.tiles_per_axis():
            x *= t
        return x, self.heads, self.B * self.DIL[0] * self.DIL[1] * self.DIL[2]

    def geometry(self, device, has_dlse=False, sizes: Optional[torch.Tensor] = None,
                 tensors: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """The kernels' ``geom`` buffer (attn_tile.h); with ``sizes`` (``[B, rank]`` per-sample extents,
        varlen) those follow, padded to 3-D, built on the device without a host round trip.
        ``tensors``: every tensor the kernels read rows of; when each row starts on a multiple of 4
        elements (widths and storage offsets), the kernels read rows as 4-vectors."""
        vec_loads = self.D % 4 == 0 and self.Dv % 4 == 0 and len(tensors) > 0
        for t in tensors:
            if t.storage_offset() % 4:
                vec_loads = False
                break
        device = torch.device(device)
        # the fixed part's values depend on the problem and three flags only: computed once per
        # problem object (problems are cached per signature, see _problem); the buffer is
        # _geom_buffer's, kept per values and device
        flags = (bool(has_dlse), sizes is not None, vec_loads)
        cached = self.__dict__.setdefault("_geom_values", {})
        values = cached.get(flags)
        if values is None:
            values = cached[flags] = self._fixed_geometry(has_dlse, sizes, vec_loads)
        fixed = _geom_buffer(values, device)
        if sizes is None:
            return fixed
        per_sample = torch.ones(self.B, 3, dtype=torch.int32, device=device)
        per_sample[:, 3 - sizes.shape[1]:] = sizes.to(device=device, dtype=torch.int32)
        return torch.cat([fixed, per_sample.reshape(-1)])

    def _fixed_geometry(self, has_dlse, sizes, vec_loads) -> Tuple[int, ...]:
        log2 = lambda xs: [int(x).bit_length() - 1 for x in xs]     # powers of two
        g = ([self.B, self.H, self.Hkv, self.D, self.Dv] + self.Lq + self.Lk + self.K + self.S + self.DIL
             + self.C + [int(self.dense), self.NG] + self.u + self.a + [self.KC, self.E, int(has_dlse),
                                                                       int(sizes is not None), int(vec_loads),
                                                                       int(self.own_walk), self.RS]
             + log2([self.NG]) + log2(self.u) + log2(self.a) + self.tiles_per_axis() + [self.H // self.Hkv])
        g += [0] * (GEOM_FIXED - len(g))          # padding: the kernels read 13 int4 vectors
        assert len(g) == GEOM_FIXED, len(g)
        return tuple(g)

    def kernel(self, lib, name: str, dtype):
        """The kernel ``name`` for this dtype, slice width, rank (the rank template drops the
        trivial leading axes from the hot loops: fewer registers) and staging batch."""
        names = self.__dict__.setdefault("_names", {})
        full = names.get((name, dtype))
        if full is None:
            tag = "" if self.NB == 1 else f"_b{self.NB}"
            full = names[(name, dtype)] = f"{name}_{_DTYPE_SUFFIX[dtype]}_{self.DS}_r{self.rank}{tag}"
        return getattr(lib, full)

    def launch_dims(self):
        """``(threads, group_size)`` of :meth:`launch` (None for an empty grid), computed once."""
        dims = self.__dict__.get("_dims", False)
        if dims is False:
            x, y, z = self.grid()
            tpg = self.threads_per_group
            dims = self._dims = None if x * y * z == 0 else ((x * tpg, y, z), (tpg, 1, 1))
        return dims

    def launch(self, lib, name, dtype, *args):
        dims = self.launch_dims()
        if dims is not None:
            self.kernel(lib, name, dtype)(*args, threads=dims[0], group_size=dims[1])


def _tiling_rules() -> tuple:
    """Everything module-level that the tiling choice reads (functions, methods and constants), as
    part of a problem's cache key: replacing a rule (a tuning hook, a test's monkeypatch) gives new
    problems instead of stale ones. A new rule the tiling reads belongs here."""
    P = _Problem
    return (_target_threadgroups, _simdgroups, _tiling, _slices, _grow, _chunk, P.__init__, P._stage_batch,
            P._wants_own_walk, P._own_slice, P._cheaper_slice, P._capped_slice, staged_itemsize,
            gpu_profile.profile_for, runtime.thread_limit, SIMDGROUPS, STAGE_BATCH, STAGE_BYTES, MAX_CHUNK,
            SLICES, NARROW_SLICES, BATCHED_SLICES)


_PROBLEMS = SignatureCache(256)


def _problem(q, k, v, kernel_size, stride, dilation, is_causal, dense, extra_tokens, lq=None, lk=None,
             tile_keys=False, backward=False, tiling: Optional[Tiling] = None) -> _Problem:
    """:class:`_Problem` for this signature, built once and kept (least recently used first out; a
    problem never changes after construction, only values derived from it are memoised on it). The
    key holds everything the tiling reads: shapes, element size, device, window arguments and the
    walk override, the tiling (forced or tuned), the GPU profile and the pipelines' thread limit."""
    tiling = tiling or forced_tiling() or DEFAULT_TILING
    key = (q.shape, k.shape, v.shape, q.dtype, q.device, tuple(kernel_size), tuple(stride), tuple(dilation),
           tuple(is_causal), dense, extra_tokens, None if lq is None else tuple(lq),
           None if lk is None else tuple(lk), tile_keys, backward, tiling, gpu_profile.profile_for(q.device),
           msl.emulated_max_threads() if q.device.type != "mps" else None, os.environ.get("NATTEN_MPS_METAL_WALK"),
           _tiling_rules())
    prob = _PROBLEMS.get(key)
    if prob is None:
        prob = _Problem(q, k, v, kernel_size, stride, dilation, is_causal, dense, extra_tokens, lq, lk, tile_keys,
                        backward=backward, tiling=tiling)
        _PROBLEMS.put(key, prob)
    return prob


def clear_caches() -> None:
    """Forget every cached problem and ``geom`` buffer."""
    _PROBLEMS.clear()
    _GEOM_CACHE.clear()


def _extras(q, extra_k, extra_v):
    if extra_k is None or extra_k.shape[1] == 0:
        return q, q, 0
    return extra_k.contiguous(), extra_v.contiguous(), extra_k.shape[1]


@runtime.pure_on_failure(fallback.attention_forward)
def attention_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale, dense=False,
                      extra_k=None, extra_v=None, sizes=None):
    """Forward: ``q`` ``[B, *L, H, D]``, ``k``/``v`` ``[B, *L(k), Hkv, D|Dv]``, optional additional
    ``extra_k``/``extra_v`` ``[B, E, Hkv, D|Dv]`` -> (out ``[B, *L, H, Dv]``, lse ``[B, *L, H]`` float32).
    ``sizes`` (varlen NA): ``[B, rank]`` int extents of each sample inside the padded ``L``; padding
    positions are never attended and come out as zeros (output and LSE)."""
    tiling = _tiling_for("forward", q, k, v, kernel_size, dilation, is_causal, dense, lambda: attention_forward(
        q, k, v, kernel_size, stride, dilation, is_causal, scale, dense, extra_k, extra_v, sizes))
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    xk, xv, E = _extras(q, extra_k, extra_v)
    prob = _problem(q, k, v, kernel_size, stride, dilation, is_causal, dense, E, tiling=tiling)
    out = _new_output(q.shape[:-1] + (prob.Dv,), q.dtype, q.device)
    lse = _new_output(q.shape[:-1], torch.float32, q.device)
    lib = runtime.library(ATTENTION_SHADER, q.device.type)
    prob.launch(lib, "attn_forward", q.dtype, q, k, v, xk, xv, out, lse,
                prob.geometry(q.device, sizes=sizes, tensors=(q, k, v, xk, xv)), float(scale))
    return out, lse


@runtime.pure_on_failure(fallback.attention_backward)
def attention_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale,
                       dense=False, extra_k=None, extra_v=None, sizes=None):
    """Backward of :func:`attention_forward`: (dq, dk, dv) and, with additional keys, (dxk, dxv);
    with ``sizes`` (varlen) the gradients of padding positions are zeros.

    Three dispatches at most: dQ and delta = rowsum(dout * out) - dlse; dK/dV over the inverse
    neighbourhood; dK/dV of the additional keys (dense geometry over every query). Small problems
    (``_fuses_backward``) run the first two as one dispatch, ``attn_backward_fused``.
    """
    tiling = _tiling_for("backward", q, k, v, kernel_size, dilation, is_causal, dense, lambda: attention_backward(
        dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale, dense, extra_k, extra_v, sizes))
    q, k, v, out = q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous()
    dout = dout.to(q.dtype).contiguous()
    lse = lse.float().contiguous()
    has_dlse = dlse is not None
    dlse_t = dlse.float().contiguous() if has_dlse else lse
    xk, xv, E = _extras(q, extra_k, extra_v)
    lib = runtime.library(ATTENTION_SHADER, q.device.type)
    prob = _problem(q, k, v, kernel_size, stride, dilation, is_causal, dense, E, backward=True, tiling=tiling)
    kprob = _problem(q, k, v, kernel_size, stride, dilation, is_causal, dense, E, tile_keys=True, backward=True,
                     tiling=tiling)
    dq = _new_output(q.shape, q.dtype, q.device)
    delta = _new_output(lse.shape, torch.float32, q.device)
    dk = _new_output(k.shape, k.dtype, k.device)
    dv = _new_output(v.shape, v.dtype, v.device)
    geom = prob.geometry(q.device, has_dlse, sizes, tensors=(q, k, v, xk, xv, out, dout))
    fused = _fused_dims(prob, kprob)
    if fused is not None:
        kgeom = kprob.geometry(q.device, has_dlse, sizes, tensors=(q, dout, out, k, v))
        nq, threads, group_size = fused
        if threads is not None:
            prob.kernel(lib, "attn_backward_fused", q.dtype)(
                q, k, v, xk, xv, out, dout, lse, dlse_t, dq, delta, dk, dv, geom, kgeom, nq, float(scale),
                threads=threads, group_size=group_size)
    else:
        prob.launch(lib, "attn_backward_dq", q.dtype, q, k, v, xk, xv, out, dout, lse, dlse_t, dq, delta, geom,
                    float(scale))
        kprob.launch(lib, "attn_backward_dkdv", q.dtype, q, k, v, dout, lse, delta, dk, dv,
                     kprob.geometry(q.device, sizes=sizes, tensors=(q, dout, k, v)), float(scale))
    if E == 0:
        return dq, dk, dv, None, None
    tokens = math.prod(q.shape[1:-2])
    xprob = _problem(q, xk, xv, [1], [1], [1], [False], True, 0, lq=[tokens], lk=[E], tile_keys=True,
                     backward=True)
    dxk = _new_output(xk.shape, xk.dtype, xk.device)
    dxv = _new_output(xv.shape, xv.dtype, xv.device)
    xprob.launch(lib, "attn_backward_dkdv", q.dtype, q, xk, xv, dout, lse, delta, dxk, dxv,
                 xprob.geometry(q.device, tensors=(q, dout, xk, xv)), float(scale))
    return dq, dk, dv, dxk, dxv


def _fused_dims(prob: "_Problem", kprob: "_Problem"):
    """None when the backward runs as two dispatches (:func:`_fuses_backward`), else
    ``(nq, threads, group_size)`` of the fused one (``threads`` None for an empty grid); kept on
    ``prob`` per value of the override flag."""
    flag = os.environ.get("NATTEN_MPS_METAL_FUSED_BACKWARD", "1")
    cached = prob.__dict__.setdefault("_fused", {})
    key = (flag, FUSED_MAX_HALO, _fuses_backward)
    if key in cached:
        return cached[key]
    dims = None
    if _fuses_backward(prob, kprob):
        (nq, heads, groups), (nk, _, _) = prob.grid(), kprob.grid()
        tpg = prob.threads_per_group
        live = (nq + nk) * heads * groups > 0
        dims = (nq, ((nq + nk) * tpg, heads, groups) if live else None, (tpg, 1, 1))
    cached[key] = dims
    return dims


def _fuses_backward(prob: "_Problem", kprob: "_Problem") -> bool:
    """Whether dQ and dK/dV run as one dispatch (``attn_backward_fused``): small problems, whose
    query and key tilings both took the small-problem kernels (``NB`` = STAGE_BATCH) at one slice
    width and threadgroup size. There no kernel fills the GPU, so the two halves run side by side
    (each dK/dV tile computes the deltas it needs from ``out``: its staged queries' rows of ``out``
    are the extra reads) and one launch's fixed cost is saved. The two halves share the grid's head
    axis (H): with GQA the dK/dV threadgroups past Hkv return at once. ``NATTEN_MPS_METAL_FUSED_BACKWARD=0``
    turns it off (experiments), and so does a tiling with ``fused=False``; ``fused=True`` lifts the
    halo bound (not the structural conditions). Only where a key tile's queries are few (``query_halo`` at most
    FUSED_MAX_HALO): each staged query costs the dK/dV tile a row of ``out`` and a reduction, so in
    2-D and 3-D, where the halo is 4-10x the tile, the two dispatches were faster (ncu, H200:
    2-D 32x32 K=7 backward 59 us as two, 67 us fused; 1-D L=256 K=7 16 us as two, 11 us fused)."""
    flag = os.environ.get("NATTEN_MPS_METAL_FUSED_BACKWARD", "1")
    if flag not in ("0", "1"):
        raise ValueError(f"NATTEN_MPS_METAL_FUSED_BACKWARD must be '0' or '1', got {flag!r}")
    fused = prob.tiling.fused
    return (flag == "1" and fused is not False and prob.NB == kprob.NB == STAGE_BATCH and prob.DS == kprob.DS
            and prob.threads_per_group == kprob.threads_per_group
            and (fused is True or kprob.query_halo() <= FUSED_MAX_HALO))


def _variant(explicit: Optional[str], env: str, tiling: Optional[Tiling]) -> str:
    """The kernel family named by ``explicit`` (a caller's ``variant=``), else the environment
    variable ``env``, else the tuner's or a forced tiling's ``variant``, else ``scalar``."""
    choice = explicit if explicit is not None else os.environ.get(env) or (tiling.variant if tiling else None)
    choice = choice or "scalar"
    if choice not in DENSE_VARIANTS:
        raise ValueError(f"kernel variant ({env} or variant=) must be one of {DENSE_VARIANTS}, got {choice!r}")
    return choice


def _matrix_or_scalar(use_matrix: bool, matrix, scalar, tiling: Optional[Tiling]):
    """Run ``matrix()`` (the simdgroup-matrix kernels) when chosen; when their family is unavailable
    on this device (a compile, pipeline or launch failure on MPS), or not chosen, ``scalar()`` with
    the same tiling."""
    if use_matrix:
        try:
            return matrix()
        except runtime.FamilyUnavailableError:
            pass
    with force_tiling(tiling):
        return scalar()


def _na_variant(q, k, v, kernel_size, variant: Optional[str] = None, tiling: Optional[Tiling] = None) -> str:
    """The NA kernels: ``variant`` if given, else ``NATTEN_MPS_METAL_NA``, else the tuner's choice
    (``scalar``, the default, or ``simdgroup``: the 2-D matrix kernels of flash_simdgroup.metal, for
    the 2-D problems without additional keys or varlen they cover). ValueError on any other name."""
    choice = _variant(variant, "NATTEN_MPS_METAL_NA", tiling)
    return ("simdgroup" if choice == "simdgroup" and len(kernel_size) == 2 and metal_flash.supported_na2d(q, k, v)
            else "scalar")


def na_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale, variant: Optional[str] = None):
    """Neighborhood attention forward (``[B, *L, H, D]`` heads-last) -> (out, lse); ``variant``:
    see :func:`_na_variant`."""
    tiling = _tiling_for("forward", q, k, v, kernel_size, dilation, is_causal, False, lambda: na_forward(
        q, k, v, kernel_size, stride, dilation, is_causal, scale, variant))
    return _matrix_or_scalar(
        _na_variant(q, k, v, kernel_size, variant, tiling) == "simdgroup",
        lambda: metal_flash.na2d_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale),
        lambda: attention_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale), tiling)


def na_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale,
                variant: Optional[str] = None):
    tiling = _tiling_for("backward", q, k, v, kernel_size, dilation, is_causal, False, lambda: na_backward(
        dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal, scale, variant))
    return _matrix_or_scalar(
        _na_variant(q, k, v, kernel_size, variant, tiling) == "simdgroup",
        lambda: metal_flash.na2d_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal,
                                          scale),
        lambda: attention_backward(dout, dlse, q, k, v, out, lse, kernel_size, stride, dilation, is_causal,
                                   scale)[:3], tiling)


def na_varlen_forward(q, k, v, sizes, kernel_size, stride, dilation, is_causal, scale):
    """Varlen neighborhood attention forward: one launch for the padded batch, each sample's windows
    inside its own extents ``sizes[b]`` (``[B, rank]`` int tensor on the device)."""
    return attention_forward(q, k, v, kernel_size, stride, dilation, is_causal, scale, sizes=sizes)


def na_varlen_backward(dout, q, k, v, out, lse, sizes, kernel_size, stride, dilation, is_causal, scale):
    dq, dk, dv, _, _ = attention_backward(dout, None, q, k, v, out, lse, kernel_size, stride, dilation,
                                          is_causal, scale, sizes=sizes)
    return dq, dk, dv


DENSE_VARIANTS = ("scalar", "simdgroup")


def _dense_variant(q, k, v, variant: Optional[str] = None, tiling: Optional[Tiling] = None) -> str:
    """The dense kernels to run: ``variant`` if given, else ``NATTEN_MPS_METAL_DENSE``, else the
    tuner's choice (``scalar``, the default: attention.metal; ``simdgroup``: flash_simdgroup.metal).
    ``simdgroup`` falls back to ``scalar`` where the matrix kernels do not apply
    (``metal_flash.supported``). ValueError on any other name."""
    choice = _variant(variant, "NATTEN_MPS_METAL_DENSE", tiling)
    return "simdgroup" if choice == "simdgroup" and metal_flash.supported(q, k, v) else "scalar"


def dense_forward(q, k, v, is_causal, scale, variant: Optional[str] = None):
    """Dense attention forward: ``q`` ``[B, Lq, H, D]``, ``k``/``v`` ``[B, Lk, Hkv, D|Dv]``;
    ``variant``: see :func:`_dense_variant`."""
    tiling = _tiling_for("forward", q, k, v, [1], [1], [is_causal], True, lambda: dense_forward(
        q, k, v, is_causal, scale, variant))
    return _matrix_or_scalar(
        _dense_variant(q, k, v, variant, tiling) == "simdgroup",
        lambda: metal_flash.dense_forward(q, k, v, is_causal, scale),
        lambda: attention_forward(q, k, v, [1], [1], [1], [is_causal], scale, dense=True), tiling)


def dense_backward(dout, dlse, q, k, v, out, lse, is_causal, scale, variant: Optional[str] = None):
    tiling = _tiling_for("backward", q, k, v, [1], [1], [is_causal], True, lambda: dense_backward(
        dout, dlse, q, k, v, out, lse, is_causal, scale, variant))
    return _matrix_or_scalar(
        _dense_variant(q, k, v, variant, tiling) == "simdgroup",
        lambda: metal_flash.dense_backward(dout, dlse, q, k, v, out, lse, is_causal, scale),
        lambda: attention_backward(dout, dlse, q, k, v, out, lse, [1], [1], [1], [is_causal], scale,
                                   dense=True)[:3], tiling)
