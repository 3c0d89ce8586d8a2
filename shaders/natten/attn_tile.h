// Geometry of the tiled attention kernels (attention.metal): one description for neighborhood
// attention (NATTEN's window rule, per axis, in dilation-group coordinates) and for dense attention
// (every key, or every key up to the query's index when causal, SDPA's top-left alignment), so one
// kernel family serves both. All index math is 32-bit: the host refuses tensors of 2^31 elements.
//
// geom (int32), see natten_mps/backends/metal.py `_geometry`:
//   [0] B  [1] H  [2] Hkv  [3] D  [4] Dv  [5..7] Lq  [8..10] Lk  [11..13] K  [14..16] stride
//   [17..19] dilation  [20..22] causal  [23] dense  [24] NG (lanes per query: D split in slices)
//   (NG, the sub-tile extents and the SIMD-groups per axis are powers of two)
//   [25..27] sub-tile (queries per SIMD-group, per axis)  [28..30] SIMD-groups per tile, per axis
//   [31] KC (tokens per staged chunk)  [32] E (additional keys)  [33] has_dlse  [34] varlen
//   [35] vec_loads: every row of every tensor starts on a multiple of 4 elements (widths and
//   tensor offsets are), so rows are read as 4-vectors
//   [36] own_walk: each lane walks its own window (attention.metal, Run), when chunks hold whole rows
//   [37] RS: 4-vectors from one staged row to the next: NG x DS / 4, plus one for the own-window walk
//   (its lanes read different rows at once; the skew puts neighbouring rows in different banks)
//   [38] log2 NG  [39..41] log2 u  [42..44] log2 a  (the host's shifts: no shift search a thread)
//   [45..47] tiles per axis of the tiled space (its longest dilation group)  [48] H / Hkv
//   [49..51] unused (the fixed part is 13 int4 vectors: kernels read it as 13 vector loads)
//   [52 + 3 b + ax] (varlen only) the extents of sample b, 3-D padded, within the padded Lq (= Lk):
//   its positions past them are padding, never attended and written as zeros.
// The grid is three-dimensional (see locate_tile): x the tiles of the tiled space, y the head,
// z the batch index and dilation group.
#pragma once
#include "na_window.h"

struct Geom {
  int B, H, Hkv, D, Dv;
  int Lq[3], Lk[3], K[3], S[3], DIL[3];
  bool C[3];
  bool dense;
  int NG;
  int u[3], a[3];
  int KC, E;
  bool has_dlse, varlen, vec_loads, own_walk;
  int RS;
  int sNG, su[3], sa[3];   // log2 of NG, u, a
  int ntiles[3];           // tiles per axis
  int groups;              // query heads a key/value head serves (GQA)
};

constant constexpr int kGeomFixed = 52;   // entries before the per-sample extents of varlen

// VEC: the fixed part as 13 int4 loads rather than 49 scalar ones (a 16-byte aligned buffer: a fresh
// tensor's storage), for the small-problem kernels (NB > 1), latency-bound: fewer instructions before
// the first address a thread can compute. The others, register-bound, load entries one by one, which
// leaves the compiler free to load an entry again (from the constant cache) where it is used instead
// of holding all 49 in registers for the whole kernel (figures: docs/performance.md).
template <bool VEC>
inline Geom load_geom(constant int* g) {
  int v[kGeomFixed];
  if (VEC) {
    constant int4* g4 = reinterpret_cast<constant int4*>(g);
    #pragma clang loop unroll(full)
    for (int i = 0; i < kGeomFixed / 4; ++i) {
      const int4 x = g4[i];
      v[4 * i] = x.x; v[4 * i + 1] = x.y; v[4 * i + 2] = x.z; v[4 * i + 3] = x.w;
    }
  } else {
    #pragma clang loop unroll(full)
    for (int i = 0; i < kGeomFixed; ++i) v[i] = g[i];
  }
  Geom G;
  G.B = v[0]; G.H = v[1]; G.Hkv = v[2]; G.D = v[3]; G.Dv = v[4];
  #pragma clang loop unroll(full)
  for (int i = 0; i < 3; ++i) {
    G.Lq[i] = v[5 + i]; G.Lk[i] = v[8 + i]; G.K[i] = v[11 + i]; G.S[i] = v[14 + i];
    G.DIL[i] = v[17 + i]; G.C[i] = v[20 + i] != 0; G.u[i] = v[25 + i]; G.a[i] = v[28 + i];
    G.su[i] = v[39 + i]; G.sa[i] = v[42 + i]; G.ntiles[i] = v[45 + i];
  }
  G.sNG = v[38];
  G.groups = v[48];
  G.dense = v[23] != 0; G.NG = v[24]; G.KC = v[31]; G.E = v[32]; G.has_dlse = v[33] != 0;
  G.varlen = v[34] != 0;
  G.vec_loads = v[35] != 0;
  G.own_walk = v[36] != 0;
  G.RS = v[37];
  return G;
}

// Positions of dilation group `grp` on an axis of `length` (32-bit form of na_group_length).
inline int group_len(int length, int dilation, int grp) {
  if (dilation == 1) return length;
  return length / dilation + (grp < length % dilation ? 1 : 0);
}

struct Span { int lo; int hi; };   // inclusive, group coordinates

// Keys of query `i` (group coordinates) on axis `ax`; `qlen`: query positions in its group.
inline Span key_span(thread const Geom& G, int ax, int i, int qlen) {
  Span s;
  if (G.dense) {
    s.lo = 0;
    s.hi = G.C[ax] ? min(i, G.Lk[ax] - 1) : G.Lk[ax] - 1;
    return s;
  }
  AxisWindowT<int> w = na_axis_window(i, qlen, G.K[ax], G.S[ax], G.C[ax]);
  s.lo = w.lo;
  s.hi = w.hi;
  return s;
}

// The queries (group coordinates) whose window on axis `ax` holds key `j`: `lo` is the first query
// whose window ends at or after j (qlen if none), `hi` the last whose window starts at or before j
// (-1 if none). Both ends of a window never decrease with the query, so exactly the queries in
// [lo, hi] hold j (none when hi < lo), and for a run of keys j0..j1 every query holding one of them
// lies in [bounds(j0).lo, bounds(j1).hi]. Closed form for dense attention and for stride 1 (every
// window centred on its query, clamped at the edges; or ending at it when causal), by bisection for
// other strides; either way the candidate is checked against the window rule, so the result is exact.
inline Span query_bounds(thread const Geom& G, int ax, int j, int qlen) {
  int lo, hi;
  if (G.dense || G.S[ax] == 1) {
    if (G.dense) {                 // windows [0, Lk - 1], or [0, min(i, Lk - 1)] when causal
      lo = G.C[ax] ? j : 0;
      hi = qlen - 1;
    } else if (G.C[ax]) {          // windows [max(i - K + 1, 0), i]
      lo = j;
      hi = j + G.K[ax] - 1;
    } else {                       // windows centred on clamp(i, left, qlen - 1 - right)
      const int left = G.K[ax] >> 1, right = left - (1 - (G.K[ax] & 1));
      lo = j - right <= left ? 0 : j - right;
      hi = j + left >= qlen - 1 - right ? qlen - 1 : j + left;
    }
    lo = clamp(lo, 0, qlen - 1);
    hi = clamp(hi, 0, qlen - 1);
  } else {
    lo = 0;
    hi = qlen - 1;
    while (lo < hi) {
      int mid = (lo + hi) / 2;
      if (key_span(G, ax, mid, qlen).hi >= j) hi = mid; else lo = mid + 1;
    }
    const int first = lo;
    lo = 0;
    hi = qlen - 1;
    while (lo < hi) {
      int mid = (lo + hi + 1) / 2;
      if (key_span(G, ax, mid, qlen).lo <= j) lo = mid; else hi = mid - 1;
    }
    hi = lo;
    lo = first;
  }
  Span s;
  s.lo = key_span(G, ax, lo, qlen).hi >= j ? lo : qlen;
  s.hi = key_span(G, ax, hi, qlen).lo <= j ? hi : -1;
  return s;
}

// The tile a threadgroup owns: `tile_origin` (group coordinates) of a box of t[ax] = u[ax] a[ax]
// positions in dilation group `grp` of batch `b`, head `h`. The grid is three-dimensional:
// tg.x the tile (flat over the tiled space's tiles, the inner axis fastest), tg.y the head, tg.z the
// batch index and dilation group (groups fastest); `len` are the (padded) extents of the tiled space.
// `glen`: positions of the group in the sample's own extents (varlen), `plen` in the padded ones;
// `padding`: the whole tile lies in the sample's padding (its threads only write zeros).
struct Tile {
  int b, h;
  int grp[3], glen[3], plen[3], origin[3], t[3];
  bool padding;
};

// R: the problem's rank; its 3 - R leading axes are trivial (one tile, one group) and the outermost
// active axis takes what is left of tg.x, so a 1-D problem's tile costs no division (a 2-D one
// one, a 3-D one two); neither do undilated problems' batch index and groups.
template <int R>
inline Tile locate_tile(thread const Geom& G, constant int* geom, uint3 tg, thread const int* len) {
  Tile T;
  int tidx[3] = {0, 0, 0};
  int rest = int(tg.x);
  #pragma clang loop unroll(full)
  for (int ax = 2; ax >= 0; --ax) {
    T.t[ax] = G.u[ax] * G.a[ax];
    T.grp[ax] = 0;
    if (ax < 3 - R) continue;
    if (ax == 3 - R) {
      tidx[ax] = rest;
      continue;
    }
    const int next = rest / G.ntiles[ax];
    tidx[ax] = rest - next * G.ntiles[ax];
    rest = next;
  }
  T.h = int(tg.y);
  rest = int(tg.z);
  if (G.DIL[0] * G.DIL[1] * G.DIL[2] != 1) {
    #pragma clang loop unroll(full)
    for (int ax = 2; ax >= 0; --ax) {
      const int next = rest / G.DIL[ax];
      T.grp[ax] = rest - next * G.DIL[ax];
      rest = next;
    }
  }
  T.b = rest;
  T.padding = false;
  #pragma clang loop unroll(full)
  for (int ax = 0; ax < 3; ++ax) {
    const int own = G.varlen ? geom[kGeomFixed + 3 * T.b + ax] : len[ax];
    T.plen[ax] = group_len(len[ax], G.DIL[ax], T.grp[ax]);
    T.glen[ax] = group_len(own, G.DIL[ax], T.grp[ax]);
    T.origin[ax] = tidx[ax] * T.t[ax];
    T.padding = T.padding || T.origin[ax] >= T.glen[ax];
  }
  return T;
}

// Flat token index of group coordinates `c` in group `grp` of a space of extents `len`.
inline int token_of(thread const int* c, thread const int* grp, thread const int* dil, thread const int* len) {
  return ((c[0] * dil[0] + grp[0]) * len[1] + (c[1] * dil[1] + grp[1])) * len[2] + (c[2] * dil[2] + grp[2]);
}
