// Geometry of the tiled attention kernels (attention.metal): one description for neighborhood
// attention (NATTEN's window rule, per axis, in dilation-group coordinates) and for dense attention
// (every key, or every key up to the query's index when causal, SDPA's top-left alignment), so one
// kernel family serves both. All index math is 32-bit: the host refuses tensors of 2^31 elements.
//
// geom (int32), see natten_mps/backends/metal.py `_geometry`:
//   [0] B  [1] H  [2] Hkv  [3] D  [4] Dv  [5..7] Lq  [8..10] Lk  [11..13] K  [14..16] stride
//   [17..19] dilation  [20..22] causal  [23] dense  [24] NG (lanes per query: D split in slices)
//   [25..27] sub-tile (queries per SIMD-group, per axis)  [28..30] SIMD-groups per tile, per axis
//   [31] KC (tokens per staged chunk)  [32] E (additional keys)  [33] has_dlse  [34] varlen
//   [35 + 3 b + ax] (varlen only) the extents of sample b, 3-D padded, within the padded Lq (= Lk):
//   its positions past them are padding, never attended and written as zeros.
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
  bool has_dlse, varlen;
};

constant constexpr int kGeomFixed = 35;   // entries before the per-sample extents of varlen

inline Geom load_geom(constant int* g) {
  Geom G;
  G.B = g[0]; G.H = g[1]; G.Hkv = g[2]; G.D = g[3]; G.Dv = g[4];
  for (int i = 0; i < 3; ++i) {
    G.Lq[i] = g[5 + i]; G.Lk[i] = g[8 + i]; G.K[i] = g[11 + i]; G.S[i] = g[14 + i];
    G.DIL[i] = g[17 + i]; G.C[i] = g[20 + i] != 0; G.u[i] = g[25 + i]; G.a[i] = g[28 + i];
  }
  G.dense = g[23] != 0; G.NG = g[24]; G.KC = g[31]; G.E = g[32]; G.has_dlse = g[33] != 0;
  G.varlen = g[34] != 0;
  return G;
}

// Positions of dilation group `grp` on an axis of `length` (32-bit form of na_group_length).
inline int group_len(int length, int dilation, int grp) {
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
// lies in [bounds(j0).lo, bounds(j1).hi]. Found by bisection.
inline Span query_bounds(thread const Geom& G, int ax, int j, int qlen) {
  int lo = 0, hi = qlen - 1;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    if (key_span(G, ax, mid, qlen).hi >= j) hi = mid; else lo = mid + 1;
  }
  Span s;
  s.lo = key_span(G, ax, lo, qlen).hi >= j ? lo : qlen;
  lo = 0;
  hi = qlen - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (key_span(G, ax, mid, qlen).lo <= j) lo = mid; else hi = mid - 1;
  }
  s.hi = key_span(G, ax, lo, qlen).lo <= j ? lo : -1;
  return s;
}

// The tile a threadgroup owns: `tile_origin` (group coordinates) of a box of t[ax] = u[ax] a[ax]
// positions in dilation group `grp` of batch `b`, head `h`. The grid is one-dimensional over
// (b, h, dilation group, tile), tiles fastest; `len` are the (padded) extents of the tiled space.
// `glen`: positions of the group in the sample's own extents (varlen), `plen` in the padded ones;
// `padding`: the whole tile lies in the sample's padding (its threads only write zeros).
struct Tile {
  int b, h;
  int grp[3], glen[3], plen[3], origin[3], t[3];
  bool padding;
};

inline Tile locate_tile(thread const Geom& G, constant int* geom, uint tg, int heads, thread const int* len) {
  Tile T;
  int ntiles[3];
  int rest = int(tg);
  for (int ax = 2; ax >= 0; --ax) {
    T.t[ax] = G.u[ax] * G.a[ax];
    int longest = (len[ax] + G.DIL[ax] - 1) / G.DIL[ax];
    ntiles[ax] = (longest + T.t[ax] - 1) / T.t[ax];
  }
  int tidx[3];
  for (int ax = 2; ax >= 0; --ax) { tidx[ax] = rest % ntiles[ax]; rest /= ntiles[ax]; }
  for (int ax = 2; ax >= 0; --ax) { T.grp[ax] = rest % G.DIL[ax]; rest /= G.DIL[ax]; }
  T.h = rest % heads;
  T.b = rest / heads;
  T.padding = false;
  for (int ax = 0; ax < 3; ++ax) {
    const int own = G.varlen ? geom[kGeomFixed + 3 * T.b + ax] : len[ax];
    T.plen[ax] = group_len(len[ax], G.DIL[ax], T.grp[ax]);
    T.glen[ax] = group_len(own, G.DIL[ax], T.grp[ax]);
    T.origin[ax] = tidx[ax] * T.t[ax];
    T.padding = T.padding || T.origin[ax] >= T.glen[ax];
  }
  return T;
}

inline int tiles_in_grid(thread const Geom& G, int heads, thread const int* len) {
  int n = G.B * heads * G.DIL[0] * G.DIL[1] * G.DIL[2];
  for (int ax = 0; ax < 3; ++ax) {
    int t = G.u[ax] * G.a[ax];
    int longest = (len[ax] + G.DIL[ax] - 1) / G.DIL[ax];
    n *= (longest + t - 1) / t;
  }
  return n;
}

// Flat token index of group coordinates `c` in group `grp` of a space of extents `len`.
inline int token_of(thread const int* c, thread const int* grp, thread const int* dil, thread const int* len) {
  return ((c[0] * dil[0] + grp[0]) * len[1] + (c[1] * dil[1] + grp[1])) * len[2] + (c[2] * dil[2] + grp[2]);
}
