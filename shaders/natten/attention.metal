// Tiled attention kernels for Apple GPUs: neighborhood attention and dense (flash) attention,
// forward and backward, one templated family (element type T, head-dim slice DS, rank R).
//
// Layout (heads-last, contiguous; 1-D and 2-D problems padded to 3-D with unit leading axes):
//   q, dout, out [B, Lq0, Lq1, Lq2, H, D|Dv]     k, v [B, Lk0, Lk1, Lk2, Hkv, D|Dv]
//   lse, delta   [B, Lq0, Lq1, Lq2, H] (float)   xk, xv [B, E, Hkv, D|Dv] (additional keys/values)
// Geometry: attn_tile.h. GQA: query head h reads key/value head h / (H / Hkv).
//
// Work split. A threadgroup owns a tile of neighbouring queries (forward, dQ) or keys (dK/dV) in
// one dilation group of one (batch, head); it is a[0] x a[1] x a[2] SIMD-groups, each owning a
// sub-tile of u[0] x u[1] x u[2] = 32 / NG positions. NG lanes share a position and split the head
// dimension in slices of DS floats (a lane holds at most 4 DS floats: few registers); their partial
// dot products meet through simd_shuffle_xor. The box holding the tile's windows (keys for a query
// tile, queries for a key tile) is staged in chunks of KC tokens once per threadgroup in
// threadgroup memory as 4-vectors (rows padded with zeros to NG x DS; float rows in the small-problem
// forward, see Staged), and every SIMD-group walks a chunk row by row (rows along the inner axis): rows outside its sub-tile's union are skipped and a
// row's tokens are bounded by the union's inner span (SIMD-uniform bounds, no per-token box
// stepping); each lane masks with its exact window. Two walks (Run): the union walk, every lane on
// the same token (broadcast reads), and the own-window walk, each lane through its own window (no
// masked steps; short windows, chosen by the host; staged rows RS = R4 + 1 vectors apart, so the rows
// its lanes read at once fall in different banks). Scores are kept in base 2
// (q pre-scaled by scale * log2 e, exp2); the forward's online softmax rescales only when a score
// passes the running maximum by more than 2^8; every accumulation is float. No atomics: dK/dV walk
// the inverse neighbourhood (attn_tile.h, query_bounds) and loop over the query heads of a key
// head, so results are bit-identical.
//
// Template parameters: element type T, head-dim slice DS, the problem's rank R (1-3): tile and
// thread location, box coordinates and row tests skip the 3 - R trivial leading axes (no integer
// division for them; divisions by the power-of-two tile extents are shifts), and NB, the rows a
// thread stages at once (1, or 4 for small, latency-bound problems; see stage_keys).
//
// Kernels (suffix _<dtype>_<DS>_r<R>, and _b4 for NB = 4):
//   attn_forward       out, lse                 (NA window + additional keys in one pass)
//   attn_backward_dq   dq, delta = rowsum(dout * out) - dlse
//   attn_backward_dkdv dk, dv                   (NA keys; with dense geometry: additional keys)
//   attn_backward_fused dq, delta, dk, dv       (_b4 only: both in one dispatch, small problems)
#include <metal_stdlib>
using namespace metal;

#include "attn_tile.h"

constant constexpr int kStageBytes = 12288;   // staged chunk of two token arrays
constant constexpr int kMaxChunk = 64;        // tokens per chunk (KC <= kMaxChunk)
constant constexpr float kLog2e = 1.4426950408889634f;
constant constexpr float kLn2 = 0.6931471805599453f;
constant constexpr float kRescaleSlack = 8.0f;  // base-2 headroom of the forward's running maximum

// Element type of the forward's staged keys and values: float in the small-problem kernels
// (WIDE = NB > 1, latency-bound: a staged element is converted once, not once a lane reading it;
// their chunks are short anyway), else the input type (half the threadgroup bytes of float, so
// twice the tokens a chunk). The host sizes chunks (KC) for float rows when NB > 1. The backward
// kernels stage the input type.
template <typename T, bool WIDE> struct Staged { typedef float type; };
template <bool WIDE> struct Staged<half, WIDE> { typedef half type; };

// Sum over the NG lanes that share one position (adjacent lanes; NG a power of two, at most 8), of
// a float or of a vector of independent sums (one exchange a level for all of them).
// DS <= 8 (the small problems' slices, few registers): three guarded exchanges, no loop. Wider
// slices keep the loop: they serve the large problems, whose kernels are limited by registers (a
// thread's registers decide how many SIMD-groups a GPU core keeps resident to hide memory latency),
// and an unrolled sum keeps more partial values live (figures: docs/performance.md).
template <int DS, typename V>
inline V slice_sum(V v, int NG) {
  if (DS <= 8) {
    if (NG > 1) v += simd_shuffle_xor(v, ushort(1));
    if (NG > 2) v += simd_shuffle_xor(v, ushort(2));
    if (NG > 4) v += simd_shuffle_xor(v, ushort(4));
    return v;
  }
  for (int m = 1; m < NG; m <<= 1) {
    v += simd_shuffle_xor(v, ushort(m));
  }
  return v;
}

inline float hsum(float4 v) { return (v.x + v.y) + (v.z + v.w); }

// Two independent sums over the NG lanes of a position: one float2 exchange a level for narrow
// slices; wide slices (register-bound kernels) sum them one after the other, so only one pair of
// partial sums is live at a time.
template <int DS>
inline float2 slice_sum2(float a, float b, int NG) {
  if (DS <= 8) return slice_sum<DS>(float2(a, b), NG);
  return float2(slice_sum<DS>(a, NG), slice_sum<DS>(b, NG));
}

// NS (a multiple of 4) independent sums in place, over the NG lanes of a position: one float4
// exchange a level for every four.
template <int DS, int NS>
inline void slice_sums(thread float* s, int NG) {
  #pragma clang loop unroll(full)
  for (int i = 0; i < NS; i += 4) {
    const float4 t = slice_sum<DS>(float4(s[i], s[i + 1], s[i + 2], s[i + 3]), NG);
    s[i] = t.x; s[i + 1] = t.y; s[i + 2] = t.z; s[i + 3] = t.w;
  }
}

// Coordinates (in the tile's group) of flat index f of a box starting at `lo` with extents `ext`
// (row-major); the 3 - R trivial leading axes cost no division.
template <int R>
inline void box_coord(int f, thread const int* lo, thread const int* ext, thread int* c) {
  if (R == 1) {
    c[0] = lo[0];
    c[1] = lo[1];
    c[2] = lo[2] + f;
    return;
  }
  const int row = f / ext[2];
  c[2] = lo[2] + f - row * ext[2];
  if (R == 2) {
    c[0] = lo[0];
    c[1] = lo[1] + row;
    return;
  }
  const int plane = row / ext[1];
  c[1] = lo[1] + row - plane * ext[1];
  c[0] = lo[0] + plane;
}

// Whether `c` lies in the spans on the problem's outer active axes (axes 0 and 1 of R = 3, axis 1
// of R = 2; none for R = 1): a box row is taken or masked as a whole, the inner axis 2 per token.
template <int R>
inline bool row_in(thread const int* c, thread const Span* s) {
  bool in = true;
  if (R >= 2) in = c[1] >= s[1].lo && c[1] <= s[1].hi;
  if (R >= 3) in = in && c[0] >= s[0].lo && c[0] <= s[0].hi;
  return in;
}

// The first position of the next row of the box (row-major, the inner axis 2 fastest). R: the
// problem's rank; its 3 - R leading axes are trivial (extent 1), so they never move. Past the
// box's last row the coordinates are left unspecified (the walks never read them there).
template <int R>
inline void next_row(thread const int* lo, thread const int* ext, thread int* c) {
  c[2] = lo[2];
  if (R == 1) return;
  if (++c[1] < lo[1] + ext[1] || R == 2) return;
  c[1] = lo[1];
  ++c[0];
}

// Moves `c` `step` positions on in the box (row-major), without a division.
template <int R>
inline void box_advance(int step, thread const int* lo, thread const int* ext, thread int* c) {
  c[2] += step;
  if (R == 1) return;
  while (c[2] >= lo[2] + ext[2]) {
    c[2] -= ext[2];
    if (++c[1] >= lo[1] + ext[1] && R == 3) {
      c[1] = lo[1];
      ++c[0];
    }
  }
}

// Tokens of the whole box rows (each `row` tokens, at most `kc`) that fit a chunk of `kc`; a 1-D box
// is one row, so there it is the row (no division).
template <int R>
inline int whole_rows(int kc, int row) {
  return R == 1 ? row : (kc / row) * row;
}

// A chunk of staged tokens [0, n) (flat box indices base .. base + n - 1) is walked row by row:
// `Walk` holds the coordinates of the current row's first staged token, the staged index of it,
// and its run (staged tokens left on the row). Per row the SIMD-group's span on the inner axis
// bounds the tokens it walks (a uniform range; nothing outside its sub-tile's union is visited),
// and each lane masks with its own window's inner span (`lane_ok`).
struct Walk {
  int c[3];
  int kk, run;
};

template <int R>
inline Walk walk_start(int base, int n, thread const int* lo, thread const int* ext) {
  Walk w;
  box_coord<R>(base, lo, ext, w.c);
  w.kk = 0;
  w.run = min(n, lo[2] + ext[2] - w.c[2]);
  return w;
}

template <int R>
inline void walk_next(thread Walk& w, int n, thread const int* lo, thread const int* ext) {
  w.kk += w.run;
  next_row<R>(lo, ext, w.c);
  w.run = min(n - w.kk, ext[2]);
}

// Position of this thread: its SIMD-group's sub-tile and its own place in it.
struct Place {
  int lane, slice;
  int first[3], last[3];     // the SIMD-group's sub-tile (group coordinates, clipped)
  int c[3];                  // this lane's position
  bool valid;                // a real position of the sample
  bool inside;               // a position of the padded tensor (valid, or varlen padding)
  bool sub_empty;
};

template <int R>
inline Place locate_thread(thread const Geom& G, thread const Tile& T, uint tid) {
  Place P;
  const int sg = int(tid) / 32;
  P.lane = int(tid) % 32;
  const int pos = P.lane >> G.sNG;
  P.slice = P.lane & (G.NG - 1);
  int sc[3] = {0, 0, 0}, lc[3] = {0, 0, 0};
  sc[2] = sg & (G.a[2] - 1);
  lc[2] = pos & (G.u[2] - 1);
  if (R >= 2) {
    sc[1] = (sg >> G.sa[2]) & (G.a[1] - 1);
    lc[1] = (pos >> G.su[2]) & (G.u[1] - 1);
    if (R >= 3) {
      sc[0] = sg >> (G.sa[2] + G.sa[1]);
      lc[0] = pos >> (G.su[2] + G.su[1]);
    }
  }
  P.valid = true;
  P.inside = true;
  P.sub_empty = false;
  #pragma clang loop unroll(full)
  for (int ax = 0; ax < 3; ++ax) {
    P.first[ax] = T.origin[ax] + sc[ax] * G.u[ax];
    P.last[ax] = min(P.first[ax] + G.u[ax] - 1, T.glen[ax] - 1);
    P.sub_empty = P.sub_empty || P.first[ax] >= T.glen[ax];
    P.c[ax] = P.first[ax] + lc[ax];
    P.valid = P.valid && P.c[ax] < T.glen[ax];
    P.inside = P.inside && P.c[ax] < T.plen[ax];
  }
  return P;
}

// Zeros in `width` entries of this lane's slice of row `row` (padding positions of varlen).
template <typename T, int DS>
inline void zero_slice(device T* dst, int row, int width, int slice) {
  for (int e = 0; e < DS; ++e) {
    const int d = slice * DS + e;
    if (d < width) dst[row * width + d] = T(0.0f);
  }
}

// Whether the tile lies past the padded extents of its dilation group (no thread has work).
inline bool tile_outside(thread const Tile& T) {
  return T.origin[0] >= T.plen[0] || T.origin[1] >= T.plen[1] || T.origin[2] >= T.plen[2];
}

// Keys of a query tile: the box of the tile's windows, the SIMD-group's and the lane's spans.
struct KeyBox {
  Span win[3], sub[3];
  int lo[3], ext[3];
  int vol;
};

template <int R>
inline KeyBox key_box(thread const Geom& G, thread const Tile& Tl, thread const Place& P) {
  KeyBox K;
  K.vol = 1;
  #pragma clang loop unroll(full)
  for (int ax = 0; ax < 3; ++ax) {
    if (ax < 3 - R) {                     // a trivial axis: one position, one key
      K.win[ax].lo = K.win[ax].hi = K.sub[ax].lo = K.sub[ax].hi = K.lo[ax] = 0;
      K.ext[ax] = 1;
      continue;
    }
    K.win[ax] = key_span(G, ax, P.valid ? P.c[ax] : 0, Tl.glen[ax]);
    K.sub[ax].lo = key_span(G, ax, P.first[ax], Tl.glen[ax]).lo;
    K.sub[ax].hi = key_span(G, ax, P.last[ax], Tl.glen[ax]).hi;
    K.lo[ax] = key_span(G, ax, Tl.origin[ax], Tl.glen[ax]).lo;
    const int hi = key_span(G, ax, min(Tl.origin[ax] + Tl.t[ax] - 1, Tl.glen[ax] - 1), Tl.glen[ax]).hi;
    K.ext[ax] = max(hi - K.lo[ax] + 1, 0);
    K.vol *= K.ext[ax];
  }
  return K;
}

// The tokens of the walk's current row that this SIMD-group visits: steps j = first .. last
// (uniform; none when the row lies outside its sub-tile's union), step j being the row's staged
// token base + j (clamped to the row), and this lane's own window [own_lo, own_hi] on the row (as
// offsets from its first staged token), which holds the row when `row_ok`.
//  * union walk (base 0): the steps run over the sub-tile's union, every lane on the same token
//    (one broadcast read of threadgroup memory a step);
//  * own-window walk (base own_lo, `width` steps): each lane steps through its own window, so no
//    step falls outside it (in 1-D and 2-D the union is 1.5-3x the window); lanes read different
//    tokens. Needs whole rows staged and a sub-tile that is a single row.
struct Run {
  int first, last, base, own_lo, own_hi;
  bool row_ok;
};

template <int R>
inline Run row_run(thread const Walk& w, thread const Span* sub, thread const Span* own, bool valid, int width) {
  Run r;
  const bool take = row_in<R>(w.c, sub);
  r.own_lo = own[2].lo - w.c[2];
  r.own_hi = own[2].hi - w.c[2];
  r.row_ok = valid && row_in<R>(w.c, own);
  if (width > 0) {
    r.base = r.own_lo;
    r.first = take ? 0 : width;
    r.last = width - 1;
  } else {
    r.base = 0;
    r.first = take ? max(sub[2].lo - w.c[2], 0) : w.run;
    r.last = min(sub[2].hi - w.c[2], w.run - 1);
  }
  return r;
}

// Staged index (in the chunk) of step j of a run, and whether it is in the lane's window.
inline int run_token(thread const Walk& w, thread const Run& r, int j) {
  return w.kk + clamp(r.base + j, 0, w.run - 1);
}
inline bool run_ok(thread const Run& r, int j) {
  return r.row_ok && r.base + j >= r.own_lo && r.base + j <= r.own_hi;
}

// Walks of a query tile's chunk: the neighbourhood box, or a chunk of additional keys (one run,
// every token in every window).
template <int R>
inline Walk key_walk(thread const KeyBox& K, bool extra, int base, int n) {
  if (!extra) return walk_start<R>(base, n, K.lo, K.ext);
  Walk w;
  w.c[0] = w.c[1] = w.c[2] = 0;
  w.kk = 0;
  w.run = n;
  return w;
}

template <int R>
inline Run key_run(thread const KeyBox& K, thread const Walk& w, bool extra, bool valid, int width) {
  if (!extra) return row_run<R>(w, K.sub, K.win, valid, width);
  Run r;
  r.first = r.own_lo = r.base = 0;
  r.last = r.own_hi = w.run - 1;
  r.row_ok = valid;
  return r;
}

// 4-vector `c` of a row of `width` elements (zero beyond it): one vector load when the host found
// every row 4-element aligned (`vec_loads`: widths and tensor offsets multiples of 4, so width >= 4),
// unconditional (the row's last vector stands in past its end, then is replaced by zeros: no branch
// around the load for the compiler to wait at), else element by element.
template <typename T>
inline vec<T, 4> load4(device const T* row, int c, int width, bool vec_loads) {
  vec<T, 4> a = vec<T, 4>(T(0.0f));
  if (vec_loads) {
    const vec<T, 4> x = reinterpret_cast<device const vec<T, 4>*>(row)[min(c, (width >> 2) - 1)];
    return 4 * c < width ? x : a;
  }
  #pragma clang loop unroll(full)
  for (int j = 0; j < 4; ++j) {
    const int d = 4 * c + j;
    if (d < width) a[j] = T(row[d]);
  }
  return a;
}

// Stores `x` as entries 4c .. 4c + 3 of a row of `width` elements (none beyond it): one vector
// store when `vec_loads` (outputs are fresh, so they are aligned whenever the inputs are), else
// element by element.
template <typename T>
inline void store4(device T* row, int c, int width, bool vec_loads, float4 x) {
  if (vec_loads) {
    if (4 * c < width) reinterpret_cast<device vec<T, 4>*>(row)[c] = vec<T, 4>(x);
    return;
  }
  #pragma clang loop unroll(full)
  for (int j = 0; j < 4; ++j) {
    const int d = 4 * c + j;
    if (d < width) row[d] = T(x[j]);
  }
}

// How the threads of a group share the staging of rows of R4 4-vectors: `per_row` threads a row
// (a power of two), `step` rows at a time; this thread's first row and its first vector.
struct StageSplit {
  int per_row, step, row0, col0;
};

// R4 = NG x DS / 4 and the 32 a[0] a[1] a[2] threads are powers of two: their shifts come from the host.
template <int DS>
inline StageSplit stage_split(thread const Geom& G, uint tid) {
  StageSplit S;
  const int r4 = G.sNG + (DS == 4 ? 0 : DS == 8 ? 1 : DS == 16 ? 2 : 3);
  const int nt = 5 + G.sa[0] + G.sa[1] + G.sa[2];
  const int sh = min(r4, nt);
  S.per_row = 1 << sh;
  S.step = 1 << (nt - sh);
  S.row0 = int(tid) >> sh;
  S.col0 = int(tid) & (S.per_row - 1);
  return S;
}

// NB: rows a thread stages at once (a template parameter of the kernels). Their device loads are all
// issued before the first threadgroup store, so the thread waits for device memory once a batch, not
// once a row (a GPU issues in order: a store stalls on its load, and the next row's loads wait behind
// it). Small problems, with too few SIMD-groups a core to hide that latency, are bound by it: the
// host takes NB = 4 for them (the "_b4" kernels, DS 4 and 8). Batches hold two 4-vectors a row and
// thread in registers, which large problems pay in resident SIMD-groups a core, so those keep
// NB = 1, a row loaded and stored in turn.
// One batch of staged rows of two arrays: rows r0, r0 + step, ... (NB of them; src[b] < 0: none) of
// `a` (width wa) and `b` (width wb, `voff` vectors further), this thread's columns of each.
// DOT: also this thread's part of each batch row's dot product of `b` with `o` (same layout as `b`),
// in dots[i] (the dK/dV kernel's own delta = rowsum(dout * out), see stage_queries).
template <typename T, typename TS, int NB, bool DOT>
inline void stage_batch(threadgroup vec<TS, 4>* st, int voff, device const T* a, device const T* b,
                        device const T* o, int wa, int wb, thread const int* src, int r0,
                        thread const StageSplit& S, int R4, int RS, bool vec_loads, thread float* dots) {
  for (int c = S.col0; c < R4; c += S.per_row) {
    if (NB == 1) {                  // one row: load and store in turn (fewer live registers)
      if (src[0] < 0) continue;
      st[r0 * RS + c] = vec<TS, 4>(load4<T>(a + src[0] * wa, c, wa, vec_loads));
      const vec<T, 4> y = load4<T>(b + src[0] * wb, c, wb, vec_loads);
      st[voff + r0 * RS + c] = vec<TS, 4>(y);
      if (DOT) dots[0] += dot(float4(y), float4(load4<T>(o + src[0] * wb, c, wb, vec_loads)));
      continue;
    }
    vec<T, 4> ab[NB], bb[NB], ob[NB];
    if (vec_loads) {
      // Branch-free loads: a batch row past the chunk reads the batch's first row again (row 0 of
      // the tensor when there is none: stage_queries' uniform loop) and a vector past a row's width
      // its last vector (all discarded below), so the batch's loads issue back
      // to back with nothing between them that waits for one (a conditional load merged into a
      // zeroed vector lets the compiler place a wait after each load, before the next is issued).
      const int ca = min(c, (wa >> 2) - 1), cb = min(c, (wb >> 2) - 1);
      #pragma clang loop unroll(full)
      for (int i = 0; i < NB; ++i) {
        const int s = src[i] >= 0 ? src[i] : max(src[0], 0);
        ab[i] = reinterpret_cast<device const vec<T, 4>*>(a + s * wa)[ca];
        bb[i] = reinterpret_cast<device const vec<T, 4>*>(b + s * wb)[cb];
        if (DOT) ob[i] = reinterpret_cast<device const vec<T, 4>*>(o + s * wb)[cb];
      }
      const vec<T, 4> zero = vec<T, 4>(T(0.0f));
      #pragma clang loop unroll(full)
      for (int i = 0; i < NB; ++i) {
        if (src[i] < 0) continue;
        const int r = r0 + i * S.step;
        const vec<T, 4> y = 4 * c < wb ? bb[i] : zero;
        st[r * RS + c] = vec<TS, 4>(4 * c < wa ? ab[i] : zero);
        st[voff + r * RS + c] = vec<TS, 4>(y);
        if (DOT) dots[i] += dot(float4(y), float4(4 * c < wb ? ob[i] : zero));
      }
      continue;
    }
    // element loads (rows not 4-aligned, a rare layout): row by row, stored as loaded
    #pragma clang loop unroll(full)
    for (int i = 0; i < NB; ++i) {
      if (src[i] < 0) continue;
      const int r = r0 + i * S.step;
      st[r * RS + c] = vec<TS, 4>(load4<T>(a + src[i] * wa, c, wa, false));
      const vec<T, 4> y = load4<T>(b + src[i] * wb, c, wb, false);
      st[voff + r * RS + c] = vec<TS, 4>(y);
      if (DOT) dots[i] += dot(float4(y), float4(load4<T>(o + src[i] * wb, c, wb, false)));
    }
  }
}

// Stage rows [n][R4] (4-vectors, rows RS vectors apart) of keys and values (neighbourhood box or
// additional tokens) of key head `hk`; values go `voff` vectors further. Rows are zero beyond D (Dv).
template <typename T, typename TS, int DS, int R, int NB>
inline void stage_keys(threadgroup vec<TS, 4>* st, int voff, device const T* k, device const T* v,
                       device const T* xk, device const T* xv, thread const Geom& G, thread const Tile& Tl,
                       thread const KeyBox& K, int hk, bool extra, int base, int n, int R4, int RS,
                       uint tid) {
  const StageSplit S = stage_split<DS>(G, tid);
  const int tokens_k = G.Lk[0] * G.Lk[1] * G.Lk[2];
  device const T* ks = extra ? xk : k;
  device const T* vs = extra ? xv : v;
  int kc[3] = {0, 0, 0};
  if (!extra && S.row0 < n) box_coord<R>(base + S.row0, K.lo, K.ext, kc);
  for (int r0 = S.row0; r0 < n; r0 += NB * S.step) {
    int src[NB];                                  // source token row of each batch row; -1: none
    #pragma clang loop unroll(full)
    for (int b = 0; b < NB; ++b) {
      src[b] = -1;
      if (r0 + b * S.step >= n) continue;
      if (extra) {
        src[b] = (Tl.b * G.E + base + r0 + b * S.step) * G.Hkv + hk;
      } else {
        src[b] = (Tl.b * tokens_k + token_of(kc, Tl.grp, G.DIL, G.Lk)) * G.Hkv + hk;
        box_advance<R>(S.step, K.lo, K.ext, kc);
      }
    }
    float unused[1];
    stage_batch<T, TS, NB, false>(st, voff, ks, vs, vs, G.D, G.Dv, src, r0, S, R4, RS, G.vec_loads, unused);
  }
}

// Stage rows [n][R4] of queries and output gradients of query head `h` (flat indices c0 .. c0 + n - 1
// of the query box lo/ext in query group `grp_q`), gradients `voff` vectors further, and per row its
// LSE (base 2) and delta in `stats` (delta kMaxChunk entries further).
// OWN_DELTA (the single-dispatch backward, attn_backward_fused): delta = rowsum(dout * out) - dlse is
// computed here from `out`, read beside dout, instead of read from `delta` (the dQ kernel's output).
// A row's per_row threads are adjacent lanes of one SIMD-group (per_row <= R4 <= 32 at the fused
// kernels' slices) whose parts meet through simd_shuffle_xor, so every lane of the group runs the
// same batches: the batch loop is uniform (rows past n are none).
template <typename T, typename TS, int DS, int R, int NB, bool OWN_DELTA>
inline void stage_queries(threadgroup vec<TS, 4>* st, threadgroup float* stats, int voff, device const T* q,
                          device const T* dout, device const T* out, device const float* lse,
                          device const float* delta, thread const Geom& G, int b_idx, thread const int* grp_q,
                          thread const int* lo, thread const int* ext, int h, int c0, int n, int R4, int RS,
                          uint tid) {
  const StageSplit S = stage_split<DS>(G, tid);
  const int tokens_q = G.Lq[0] * G.Lq[1] * G.Lq[2];
  int qc[3] = {0, 0, 0};
  if (S.row0 < n) box_coord<R>(c0 + S.row0, lo, ext, qc);
  for (int rb = 0; rb < n; rb += NB * S.step) {
    const int r0 = rb + S.row0;
    int src[NB];
    float ls[NB], dl[NB], dots[NB];
    #pragma clang loop unroll(full)
    for (int b = 0; b < NB; ++b) {
      src[b] = -1;
      dots[b] = 0.0f;
      if (r0 + b * S.step >= n) continue;
      src[b] = (b_idx * tokens_q + token_of(qc, grp_q, G.DIL, G.Lq)) * G.H + h;
      box_advance<R>(S.step, lo, ext, qc);
      if (S.col0 == 0) {
        ls[b] = lse[src[b]];
        dl[b] = OWN_DELTA ? (G.has_dlse ? -delta[src[b]] : 0.0f) : delta[src[b]];   // (delta: dlse here)
      }
    }
    stage_batch<T, TS, NB, OWN_DELTA>(st, voff, q, dout, out, G.D, G.Dv, src, r0, S, R4, RS, G.vec_loads, dots);
    if (OWN_DELTA) {
      #pragma clang loop unroll(full)
      for (int b = 0; b < NB; ++b) dots[b] = slice_sum<32>(dots[b], S.per_row);
    }
    if (S.col0 == 0) {
      #pragma clang loop unroll(full)
      for (int b = 0; b < NB; ++b) {
        if (src[b] < 0) continue;
        stats[r0 + b * S.step] = ls[b] * kLog2e;
        stats[kMaxChunk + r0 + b * S.step] = OWN_DELTA ? dots[b] + dl[b] : dl[b];
      }
    }
  }
}

// This lane's part of the dot product of a staged row (its slice of DS floats, at `row`) with `x`.
template <typename T, int DS>
inline float slice_dot(threadgroup const vec<T, 4>* row, thread const float4* x) {
  float4 part = float4(0.0f);
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) {
    const vec<T, 4> r = row[i];
    part += x[i] * float4(r);
  }
  return hsum(part);
}

// Moves the forward's running maximum `m` to `top` (base 2), rescaling the sum `l` and the output
// slice `av` to it.
template <int DS>
inline void rescale_to(float top, thread float& m, thread float& l, thread float4* av) {
  const float corr = exp2(m - top);
  l *= corr;
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) av[i] *= corr;
  m = top;
}

// One key of the forward's online softmax: score `s` (base 2), its staged value row slice `vr`;
// running maximum `m`, sum `l` and output slice `av` (the rules of online_steps, key by key).
template <typename T, int DS>
inline void online_step(float s, threadgroup const vec<T, 4>* vr, thread float& m, thread float& l,
                        thread float4* av) {
  if (s > m + kRescaleSlack) rescale_to<DS>(s, m, l, av);
  const float p = exp2(s - m);
  l += p;
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) {
    const vec<T, 4> r = vr[i];
    av[i] += p * float4(r);
  }
}

// A group of NS keys of the forward's online softmax: scores `s` (base 2; ok[i]: step i is in the
// lane's window), staged value rows `vrows + tok[i] * RS` (this lane's slice); running maximum `m`,
// sum `l` and output slice `av`.
// NaN-propagating: a NaN score never raises m (comparisons with NaN are false) and makes p (so l)
// NaN. Lazy rescaling: the running maximum moves only when the group's largest score passes it by
// more than kRescaleSlack (base 2), so every p = exp2(s - m) stays below 2^kRescaleSlack and the
// rescale is rare after the first keys. Steps outside the window add nothing (not even 0 x NaN).
template <typename T, int DS, int NS>
inline void online_steps(thread const float* s, thread const bool* ok, thread const int* tok,
                         threadgroup const vec<T, 4>* vrows, int RS, thread float& m, thread float& l,
                         thread float4* av) {
  float top = m;
  #pragma clang loop unroll(full)
  for (int i = 0; i < NS; ++i) top = ok[i] && s[i] > top ? s[i] : top;
  if (top > m + kRescaleSlack) rescale_to<DS>(top, m, l, av);
  float p[NS];
  #pragma clang loop unroll(full)
  for (int i = 0; i < NS; ++i) p[i] = exp2(s[i] - m);
  #pragma clang loop unroll(full)
  for (int i = 0; i < NS; ++i) {
    if (!ok[i]) continue;
    l += p[i];
    threadgroup const vec<T, 4>* vr = vrows + tok[i] * RS;
    #pragma clang loop unroll(full)
    for (int d = 0; d < DS / 4; ++d) {
      const vec<T, 4> x = vr[d];
      av[d] += p[i] * float4(x);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------
template <typename T, int DS, int R, int NB>
kernel void attn_forward(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                         device const T* v [[buffer(2)]], device const T* xk [[buffer(3)]],
                         device const T* xv [[buffer(4)]], device T* out [[buffer(5)]],
                         device float* lse [[buffer(6)]], constant int* geom [[buffer(7)]],
                         constant float& scale [[buffer(8)]],
                         uint3 tg [[threadgroup_position_in_grid]],
                         uint tid [[thread_index_in_threadgroup]]) {
  typedef typename Staged<T, (NB > 1)>::type TS;
  threadgroup vec<TS, 4> stage[kStageBytes / (4 * sizeof(TS))];
  const Geom G = load_geom<(NB > 1)>(geom);
  const Tile Tl = locate_tile<R>(G, geom, tg, G.Lq);
  if (tile_outside(Tl)) return;                          // the whole tile lies past a short group
  const Place P = locate_thread<R>(G, Tl, tid);
  const int tokens_q = G.Lq[0] * G.Lq[1] * G.Lq[2];
  const int row = (Tl.b * tokens_q + token_of(P.c, Tl.grp, G.DIL, G.Lq)) * G.H + Tl.h;
  if (Tl.padding) {                                      // varlen: the tile is all padding
    if (P.inside) {
      zero_slice<T, DS>(out, row, G.Dv, P.slice);
      if (P.slice == 0) lse[row] = 0.0f;
    }
    return;
  }
  const KeyBox K = key_box<R>(G, Tl, P);
  const int R4 = G.NG * DS / 4, RS = G.RS, s4 = P.slice * DS / 4, voff = G.KC * RS;
  const int hk = G.groups == 1 ? Tl.h : Tl.h / G.groups;

  float4 qv[DS / 4], av[DS / 4];
  const float qscale = scale * kLog2e;
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) {
    qv[i] = P.valid ? float4(load4<T>(q + row * G.D, s4 + i, G.D, G.vec_loads)) * qscale : float4(0.0f);
    av[i] = float4(0.0f);
  }
  float m = -INFINITY, l = 0.0f;
  constexpr int kSteps = 4;            // steps a group in the small problems' walk (NB > 1)

  // Neighbourhood keys, then the additional keys (every query sees them all).
  // Own-window walk (host's choice) when a chunk holds whole rows of the box: chunks of whole rows.
  const bool own = G.own_walk && K.ext[2] <= G.KC;
  const int own_width = own ? G.K[2] : 0;
  const int chunk = own ? whole_rows<R>(G.KC, K.ext[2]) : G.KC;
  const int total = K.vol + G.E;
  for (int c0 = 0, n = 0; c0 < total; c0 += n) {     // chunks never straddle the two key sets
    const bool extra = c0 >= K.vol;
    const int base = extra ? c0 - K.vol : c0;
    n = extra ? min(G.KC, G.E - base) : min(chunk, K.vol - c0);
    if (c0 > 0) threadgroup_barrier(mem_flags::mem_threadgroup);   // the previous chunk is consumed
    stage_keys<T, TS, DS, R, NB>(stage, voff, k, v, xk, xv, G, Tl, K, hk, extra, base, n, R4, RS, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (P.sub_empty) continue;
    for (Walk w = key_walk<R>(K, extra, base, n); w.kk < n; walk_next<R>(w, n, K.lo, K.ext)) {
      const Run run = key_run<R>(K, w, extra, P.valid, extra ? 0 : own_width);
      if (run.first > run.last) continue;                   // SIMD-uniform
      if (NB > 1) {
        // Small problems (latency-bound): steps in groups of kSteps, whose dot products and lane
        // exchanges are independent (one float4 exchange a level for four), so their latencies
        // overlap, then one softmax update for the group.
        for (int j = run.first; j <= run.last; j += kSteps) {
          int tok[kSteps];
          bool ok[kSteps];
          float s[kSteps];
          #pragma clang loop unroll(full)
          for (int i = 0; i < kSteps; ++i) {
            tok[i] = run_token(w, run, min(j + i, run.last));  // past the run: its last step again, unused
            ok[i] = j + i <= run.last && run_ok(run, j + i);
            s[i] = slice_dot<TS, DS>(stage + tok[i] * RS + s4, qv);
          }
          slice_sums<DS, kSteps>(s, G.NG);
          online_steps<TS, DS, kSteps>(s, ok, tok, stage + voff + s4, RS, m, l, av);
        }
        continue;
      }
      // Large problems (register-bound): steps in pairs, both scores' dot products and lane
      // exchanges independent (one float2 exchange a level), then the softmax takes them in order.
      for (int j = run.first; j <= run.last; j += 2) {
        const int j1 = min(j + 1, run.last);                // the pair's second step (none: j again)
        const int k0 = run_token(w, run, j), k1 = run_token(w, run, j1);
        const float2 s = slice_sum2<DS>(slice_dot<TS, DS>(stage + k0 * RS + s4, qv),
                                        slice_dot<TS, DS>(stage + k1 * RS + s4, qv), G.NG);
        if (run_ok(run, j)) online_step<TS, DS>(s.x, stage + voff + k0 * RS + s4, m, l, av);
        if (j1 > j && run_ok(run, j1)) online_step<TS, DS>(s.y, stage + voff + k1 * RS + s4, m, l, av);
      }
    }
  }
  if (!P.valid) {
    if (P.inside) {
      zero_slice<T, DS>(out, row, G.Dv, P.slice);
      if (P.slice == 0) lse[row] = 0.0f;
    }
    return;
  }
  const float inv = 1.0f / l;
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) store4<T>(out + row * G.Dv, s4 + i, G.Dv, G.vec_loads, av[i] * inv);
  if (P.slice == 0) lse[row] = (m + log2(l)) * kLn2;
}

// ------------------------------------------------------------------------------------------------
// Backward, part 1: dQ and delta = rowsum(dout * out) - dlse, per query tile
// ------------------------------------------------------------------------------------------------
// One step of dQ: score `s` (base 2) and dP of a staged key row `kr`: dq += exp2(s - lse) (dP - delta) k.
template <typename T, int DS>
inline void dq_step(float s, float dp, float lse2, float dlt, threadgroup const vec<T, 4>* kr, thread float4* dqa) {
  const float ds = exp2(s - lse2) * (dp - dlt);
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) {
    const vec<T, 4> x = kr[i];
    dqa[i] += ds * float4(x);
  }
}

// One step of dK/dV: score and dP of a staged query row `qs` (and its output gradient `gs`), the
// query's LSE (base 2) and delta: dv += p dout, dk += p (dP - delta) q.
template <typename T, int DS>
inline void dkdv_step(float s, float dp, float lse2, float dlt, threadgroup const vec<T, 4>* qs,
                      threadgroup const vec<T, 4>* gs, thread float4* dka, thread float4* dva) {
  const float p = exp2(s - lse2);
  const float ds = p * (dp - dlt);
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) {
    const vec<T, 4> x = qs[i];
    const vec<T, 4> y = gs[i];
    dva[i] += p * float4(y);
    dka[i] += ds * float4(x);
  }
}

template <typename T, typename TS, int DS, int R, int NB>
inline void backward_dq(device const T* q, device const T* k, device const T* v, device const T* xk,
                        device const T* xv, device const T* out, device const T* dout, device const float* lse,
                        device const float* dlse, device T* dq, device float* delta, constant int* geom,
                        float scale, threadgroup vec<TS, 4>* stage, uint3 tg, uint tid) {
  const Geom G = load_geom<(NB > 1)>(geom);
  const bool kPairs = NB > 1;   // small problems: steps in pairs (see the loop); large ones: registers
  const Tile Tl = locate_tile<R>(G, geom, tg, G.Lq);
  if (tile_outside(Tl)) return;
  const Place P = locate_thread<R>(G, Tl, tid);
  const int tokens_q = G.Lq[0] * G.Lq[1] * G.Lq[2];
  const int row = (Tl.b * tokens_q + token_of(P.c, Tl.grp, G.DIL, G.Lq)) * G.H + Tl.h;
  if (Tl.padding) {
    if (P.inside) {
      zero_slice<T, DS>(dq, row, G.D, P.slice);
      if (P.slice == 0) delta[row] = 0.0f;
    }
    return;
  }
  const KeyBox K = key_box<R>(G, Tl, P);
  const int R4 = G.NG * DS / 4, RS = G.RS, s4 = P.slice * DS / 4, voff = G.KC * RS;
  const int hk = G.groups == 1 ? Tl.h : Tl.h / G.groups;

  float4 qv[DS / 4], gv[DS / 4], dqa[DS / 4];
  const float qscale = scale * kLog2e;
  float dsum = 0.0f;
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) {
    qv[i] = gv[i] = dqa[i] = float4(0.0f);
    if (P.valid) {
      qv[i] = float4(load4<T>(q + row * G.D, s4 + i, G.D, G.vec_loads)) * qscale;
      gv[i] = float4(load4<T>(dout + row * G.Dv, s4 + i, G.Dv, G.vec_loads));
      dsum += hsum(gv[i] * float4(load4<T>(out + row * G.Dv, s4 + i, G.Dv, G.vec_loads)));
    }
  }
  dsum = slice_sum<DS>(dsum, G.NG);
  const float dlt = dsum - ((P.valid && G.has_dlse) ? dlse[row] : 0.0f);
  const float lse2 = P.valid ? lse[row] * kLog2e : 0.0f;

  // Own-window walk (host's choice) when a chunk holds whole rows of the box: chunks of whole rows.
  const bool own = G.own_walk && K.ext[2] <= G.KC;
  const int own_width = own ? G.K[2] : 0;
  const int chunk = own ? whole_rows<R>(G.KC, K.ext[2]) : G.KC;
  const int total = K.vol + G.E;
  for (int c0 = 0, n = 0; c0 < total; c0 += n) {
    const bool extra = c0 >= K.vol;
    const int base = extra ? c0 - K.vol : c0;
    n = extra ? min(G.KC, G.E - base) : min(chunk, K.vol - c0);
    if (c0 > 0) threadgroup_barrier(mem_flags::mem_threadgroup);
    stage_keys<T, TS, DS, R, NB>(stage, voff, k, v, xk, xv, G, Tl, K, hk, extra, base, n, R4, RS, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (P.sub_empty) continue;
    for (Walk w = key_walk<R>(K, extra, base, n); w.kk < n; walk_next<R>(w, n, K.lo, K.ext)) {
      const Run run = key_run<R>(K, w, extra, P.valid, extra ? 0 : own_width);
      if (run.first > run.last) continue;                   // SIMD-uniform
      // kPairs: steps in pairs (both steps' score and dP in one float4 exchange a level).
      for (int j = run.first; j <= run.last; j += kPairs ? 2 : 1) {
        const int j1 = kPairs ? min(j + 1, run.last) : j;
        const int k0 = run_token(w, run, j), k1 = run_token(w, run, j1);
        threadgroup const vec<TS, 4>* kr0 = stage + k0 * RS + s4;
        threadgroup const vec<TS, 4>* kr1 = stage + k1 * RS + s4;
        float4 sd;                                           // score, dP of step j, then of step j1
        if (kPairs) {
          sd = slice_sum<DS>(float4(slice_dot<TS, DS>(kr0, qv), slice_dot<TS, DS>(stage + voff + k0 * RS + s4, gv),
                                    slice_dot<TS, DS>(kr1, qv), slice_dot<TS, DS>(stage + voff + k1 * RS + s4, gv)),
                             G.NG);
        } else {
          const float2 one = slice_sum2<DS>(slice_dot<TS, DS>(kr0, qv),
                                            slice_dot<TS, DS>(stage + voff + k0 * RS + s4, gv), G.NG);
          sd = float4(one, one);
        }
        if (run_ok(run, j)) dq_step<TS, DS>(sd.x, sd.y, lse2, dlt, kr0, dqa);
        if (kPairs && j1 > j && run_ok(run, j1)) dq_step<TS, DS>(sd.z, sd.w, lse2, dlt, kr1, dqa);
      }
    }
  }
  if (!P.valid) {
    if (P.inside) {
      zero_slice<T, DS>(dq, row, G.D, P.slice);
      if (P.slice == 0) delta[row] = 0.0f;
    }
    return;
  }
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) store4<T>(dq + row * G.D, s4 + i, G.D, G.vec_loads, dqa[i] * scale);
  if (P.slice == 0) delta[row] = dlt;
}

template <typename T, int DS, int R, int NB>
kernel void attn_backward_dq(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                             device const T* v [[buffer(2)]], device const T* xk [[buffer(3)]],
                             device const T* xv [[buffer(4)]], device const T* out [[buffer(5)]],
                             device const T* dout [[buffer(6)]], device const float* lse [[buffer(7)]],
                             device const float* dlse [[buffer(8)]], device T* dq [[buffer(9)]],
                             device float* delta [[buffer(10)]], constant int* geom [[buffer(11)]],
                             constant float& scale [[buffer(12)]],
                             uint3 tg [[threadgroup_position_in_grid]],
                             uint tid [[thread_index_in_threadgroup]]) {
  typedef typename Staged<T, (NB > 1)>::type TS;
  threadgroup vec<TS, 4> stage[kStageBytes / (4 * sizeof(TS))];
  backward_dq<T, TS, DS, R, NB>(q, k, v, xk, xv, out, dout, lse, dlse, dq, delta, geom, scale, stage, tg, tid);
}

// ------------------------------------------------------------------------------------------------
// Backward, part 2: dK and dV, per key tile, over the queries whose windows hold the keys
// ------------------------------------------------------------------------------------------------
// OWN_DELTA: `out` is read and delta computed from it (stage_queries); `delta` then holds dlse.
template <typename T, typename TS, int DS, int R, int NB, bool OWN_DELTA>
inline void backward_dkdv(device const T* q, device const T* k, device const T* v, device const T* dout,
                          device const T* out, device const float* lse, device const float* delta, device T* dk,
                          device T* dv, constant int* geom, float scale, threadgroup vec<TS, 4>* stage,
                          threadgroup float* stats, uint3 tg, uint tid) {
  const Geom G = load_geom<(NB > 1)>(geom);
  const bool kPairs = NB > 1;   // small problems: steps in pairs (see the loop); large ones: registers
  const Tile Tl = locate_tile<R>(G, geom, tg, G.Lk);     // a tile of keys of key head Tl.h
  if (tile_outside(Tl) || Tl.h >= G.Hkv) return;         // (the fused backward's grid has H heads)
  const Place P = locate_thread<R>(G, Tl, tid);
  const int R4 = G.NG * DS / 4, RS = G.RS, s4 = P.slice * DS / 4, voff = G.KC * RS;
  const int hk = Tl.h, groups = G.groups;
  const int tokens_k = G.Lk[0] * G.Lk[1] * G.Lk[2];
  const int krow = (Tl.b * tokens_k + token_of(P.c, Tl.grp, G.DIL, G.Lk)) * G.Hkv + hk;
  if (Tl.padding) {
    if (P.inside) {
      zero_slice<T, DS>(dk, krow, G.D, P.slice);
      zero_slice<T, DS>(dv, krow, G.Dv, P.slice);
    }
    return;
  }

  // Query positions of this key group: the same group in NA (queries and keys share extents),
  // the whole query space in dense attention.
  int qlen[3], grp_q[3];
  #pragma clang loop unroll(full)
  for (int ax = 0; ax < 3; ++ax) {
    qlen[ax] = G.dense ? G.Lq[ax] : Tl.glen[ax];
    grp_q[ax] = G.dense ? 0 : Tl.grp[ax];
  }
  // The queries whose window holds this lane's key form a box (query_bounds is exact for one key),
  // so the lane's mask is a range test on the staged query's coordinates.
  Span sub[3], mine[3];
  int lo[3], ext[3];
  int vol = 1;
  #pragma clang loop unroll(full)
  for (int ax = 0; ax < 3; ++ax) {
    if (ax < 3 - R) {                     // a trivial axis: one position, one query
      mine[ax].lo = mine[ax].hi = sub[ax].lo = sub[ax].hi = lo[ax] = 0;
      ext[ax] = 1;
      continue;
    }
    mine[ax] = query_bounds(G, ax, P.valid ? P.c[ax] : 0, qlen[ax]);
    sub[ax].lo = query_bounds(G, ax, P.first[ax], qlen[ax]).lo;
    sub[ax].hi = query_bounds(G, ax, P.last[ax], qlen[ax]).hi;
    lo[ax] = query_bounds(G, ax, Tl.origin[ax], qlen[ax]).lo;
    const int hi = query_bounds(G, ax, min(Tl.origin[ax] + Tl.t[ax] - 1, Tl.glen[ax] - 1), qlen[ax]).hi;
    ext[ax] = max(hi - lo[ax] + 1, 0);
    vol *= ext[ax];
  }

  float4 kv[DS / 4], vv[DS / 4], dka[DS / 4], dva[DS / 4];
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) {
    kv[i] = vv[i] = dka[i] = dva[i] = float4(0.0f);
    if (P.valid) {
      kv[i] = float4(load4<T>(k + krow * G.D, s4 + i, G.D, G.vec_loads)) * (scale * kLog2e);
      vv[i] = float4(load4<T>(v + krow * G.Dv, s4 + i, G.Dv, G.vec_loads));
    }
  }
  // Own-window walk (host's choice) when a chunk holds whole rows of the query box; the steps per
  // row are the longest inner span of the SIMD-group's keys (inverse windows differ in length).
  const bool own = G.own_walk && ext[2] <= G.KC;
  const int own_width = own ? simd_max(mine[2].hi - mine[2].lo + 1) : 0;
  const int chunk = own ? whole_rows<R>(G.KC, ext[2]) : G.KC;

  for (int gh = 0; gh < groups; ++gh) {
    const int h = hk * groups + gh;
    for (int c0 = 0; c0 < vol; c0 += chunk) {
      const int n = min(chunk, vol - c0);
      if (gh > 0 || c0 > 0) threadgroup_barrier(mem_flags::mem_threadgroup);   // the last chunk is consumed
      stage_queries<T, TS, DS, R, NB, OWN_DELTA>(stage, stats, voff, q, dout, out, lse, delta, G, Tl.b, grp_q, lo,
                                             ext, h, c0, n, R4, RS, tid);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      if (P.sub_empty) continue;
      for (Walk w = walk_start<R>(c0, n, lo, ext); w.kk < n; walk_next<R>(w, n, lo, ext)) {
        const Run run = row_run<R>(w, sub, mine, P.valid, own_width);
        if (run.first > run.last) continue;                 // SIMD-uniform
        for (int j = run.first; j <= run.last; j += kPairs ? 2 : 1) {   // kPairs: as in backward_dq
          const int j1 = kPairs ? min(j + 1, run.last) : j;
          const int i0 = run_token(w, run, j), i1 = run_token(w, run, j1);
          threadgroup const vec<TS, 4>* qs0 = stage + i0 * RS + s4;
          threadgroup const vec<TS, 4>* gs0 = stage + voff + i0 * RS + s4;
          threadgroup const vec<TS, 4>* qs1 = stage + i1 * RS + s4;
          threadgroup const vec<TS, 4>* gs1 = stage + voff + i1 * RS + s4;
          float4 sd;                                         // score, dP of step j, then of step j1
          if (kPairs) {
            sd = slice_sum<DS>(float4(slice_dot<TS, DS>(qs0, kv), slice_dot<TS, DS>(gs0, vv),
                                      slice_dot<TS, DS>(qs1, kv), slice_dot<TS, DS>(gs1, vv)), G.NG);
          } else {
            const float2 one = slice_sum2<DS>(slice_dot<TS, DS>(qs0, kv), slice_dot<TS, DS>(gs0, vv), G.NG);
            sd = float4(one, one);
          }
          if (run_ok(run, j)) dkdv_step<TS, DS>(sd.x, sd.y, stats[i0], stats[kMaxChunk + i0], qs0, gs0, dka, dva);
          if (kPairs && j1 > j && run_ok(run, j1))
            dkdv_step<TS, DS>(sd.z, sd.w, stats[i1], stats[kMaxChunk + i1], qs1, gs1, dka, dva);
        }
      }
    }
  }
  if (!P.valid) {
    if (P.inside) {
      zero_slice<T, DS>(dk, krow, G.D, P.slice);
      zero_slice<T, DS>(dv, krow, G.Dv, P.slice);
    }
    return;
  }
  #pragma clang loop unroll(full)
  for (int i = 0; i < DS / 4; ++i) {
    store4<T>(dk + krow * G.D, s4 + i, G.D, G.vec_loads, dka[i] * scale);
    store4<T>(dv + krow * G.Dv, s4 + i, G.Dv, G.vec_loads, dva[i]);
  }
}

template <typename T, int DS, int R, int NB>
kernel void attn_backward_dkdv(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                               device const T* v [[buffer(2)]], device const T* dout [[buffer(3)]],
                               device const float* lse [[buffer(4)]], device const float* delta [[buffer(5)]],
                               device T* dk [[buffer(6)]], device T* dv [[buffer(7)]],
                               constant int* geom [[buffer(8)]], constant float& scale [[buffer(9)]],
                               uint3 tg [[threadgroup_position_in_grid]],
                               uint tid [[thread_index_in_threadgroup]]) {
  typedef typename Staged<T, (NB > 1)>::type TS;
  threadgroup vec<TS, 4> stage[kStageBytes / (4 * sizeof(TS))];
  threadgroup float stats[2 * kMaxChunk];          // per staged query: lse (base 2), delta
  backward_dkdv<T, TS, DS, R, NB, false>(q, k, v, dout, dout, lse, delta, dk, dv, geom, scale, stage, stats, tg, tid);
}

// ------------------------------------------------------------------------------------------------
// Backward in one dispatch (small problems): threadgroups x in [0, q_tiles) are dQ tiles (geometry
// `geom`), the rest dK/dV tiles (geometry `kgeom`; with GQA those of heads past Hkv have no work),
// each computing the deltas of the queries it stages itself, so no tile waits for another. Same results as the two-kernel backward; dQ tiles
// still write delta (the additional keys' dK/dV kernel, a later dispatch, reads it).
// ------------------------------------------------------------------------------------------------
template <typename T, int DS, int R, int NB>
kernel void attn_backward_fused(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                                device const T* v [[buffer(2)]], device const T* xk [[buffer(3)]],
                                device const T* xv [[buffer(4)]], device const T* out [[buffer(5)]],
                                device const T* dout [[buffer(6)]], device const float* lse [[buffer(7)]],
                                device const float* dlse [[buffer(8)]], device T* dq [[buffer(9)]],
                                device float* delta [[buffer(10)]], device T* dk [[buffer(11)]],
                                device T* dv [[buffer(12)]], constant int* geom [[buffer(13)]],
                                constant int* kgeom [[buffer(14)]], constant long& q_tiles [[buffer(15)]],
                                constant float& scale [[buffer(16)]],
                                uint3 tg [[threadgroup_position_in_grid]],
                                uint tid [[thread_index_in_threadgroup]]) {
  typedef typename Staged<T, (NB > 1)>::type TS;
  threadgroup vec<TS, 4> stage[kStageBytes / (4 * sizeof(TS))];
  threadgroup float stats[2 * kMaxChunk];
  const uint nq = uint(q_tiles);           // query tiles a (batch, head, group); fewer than 2^31
  if (tg.x < nq) {
    backward_dq<T, TS, DS, R, NB>(q, k, v, xk, xv, out, dout, lse, dlse, dq, delta, geom, scale, stage, tg, tid);
  } else {
    backward_dkdv<T, TS, DS, R, NB, true>(q, k, v, dout, out, lse, dlse, dk, dv, kgeom, scale, stage, stats,
                                      uint3(tg.x - nq, tg.y, tg.z), tid);
  }
}

#define INSTANTIATE_ATTN(NAME, T, DS, R, NB, TAG)                                                         \
  template [[host_name("attn_forward_" #NAME "_" #DS "_r" #R TAG)]] kernel void attn_forward<T, DS, R, NB>( \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* xk [[buffer(3)]], device const T* xv [[buffer(4)]], device T* out [[buffer(5)]], \
      device float* lse [[buffer(6)]], constant int* geom [[buffer(7)]],                       \
      constant float& scale [[buffer(8)]], uint3 tg [[threadgroup_position_in_grid]],              \
      uint tid [[thread_index_in_threadgroup]]);                                                   \
  template [[host_name("attn_backward_dq_" #NAME "_" #DS "_r" #R TAG)]] kernel void attn_backward_dq<T, DS, R, NB>( \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* xk [[buffer(3)]], device const T* xv [[buffer(4)]], device const T* out [[buffer(5)]], \
      device const T* dout [[buffer(6)]], device const float* lse [[buffer(7)]],                  \
      device const float* dlse [[buffer(8)]], device T* dq [[buffer(9)]], device float* delta [[buffer(10)]], \
      constant int* geom [[buffer(11)]], constant float& scale [[buffer(12)]],                 \
      uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]]);          \
  template [[host_name("attn_backward_dkdv_" #NAME "_" #DS "_r" #R TAG)]] kernel void attn_backward_dkdv<T, DS, R, NB>( \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* dout [[buffer(3)]], device const float* lse [[buffer(4)]],                   \
      device const float* delta [[buffer(5)]], device T* dk [[buffer(6)]], device T* dv [[buffer(7)]], \
      constant int* geom [[buffer(8)]], constant float& scale [[buffer(9)]],                   \
      uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]]);          \

#define INSTANTIATE_FUSED(NAME, T, DS, R, NB, TAG)                                                       \
  template [[host_name("attn_backward_fused_" #NAME "_" #DS "_r" #R TAG)]] kernel void attn_backward_fused<T, DS, R, NB>( \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* xk [[buffer(3)]], device const T* xv [[buffer(4)]], device const T* out [[buffer(5)]], \
      device const T* dout [[buffer(6)]], device const float* lse [[buffer(7)]],                  \
      device const float* dlse [[buffer(8)]], device T* dq [[buffer(9)]], device float* delta [[buffer(10)]], \
      device T* dk [[buffer(11)]], device T* dv [[buffer(12)]], constant int* geom [[buffer(13)]],          \
      constant int* kgeom [[buffer(14)]], constant long& q_tiles [[buffer(15)]],                            \
      constant float& scale [[buffer(16)]], uint3 tg [[threadgroup_position_in_grid]],                      \
      uint tid [[thread_index_in_threadgroup]]);

#define INSTANTIATE_ATTN_RANKS(NAME, T, DS, NB, TAG)                                            \
  INSTANTIATE_ATTN(NAME, T, DS, 1, NB, TAG) INSTANTIATE_ATTN(NAME, T, DS, 2, NB, TAG)             \
  INSTANTIATE_ATTN(NAME, T, DS, 3, NB, TAG)
// The small problems' kernels: NB = 4 ("_b4") and the single-dispatch backward.
#define INSTANTIATE_SMALL_RANKS(NAME, T, DS)                                                      \
  INSTANTIATE_ATTN_RANKS(NAME, T, DS, 4, "_b4") INSTANTIATE_FUSED(NAME, T, DS, 1, 4, "_b4")       \
  INSTANTIATE_FUSED(NAME, T, DS, 2, 4, "_b4") INSTANTIATE_FUSED(NAME, T, DS, 3, 4, "_b4")
// Every slice width with NB = 1; the small problems' slices (4, 8) also as small-problem kernels.
#define INSTANTIATE_ATTN_DTYPE(NAME, T)                                                           \
  INSTANTIATE_ATTN_RANKS(NAME, T, 4, 1, "") INSTANTIATE_ATTN_RANKS(NAME, T, 8, 1, "")             \
  INSTANTIATE_ATTN_RANKS(NAME, T, 16, 1, "") INSTANTIATE_ATTN_RANKS(NAME, T, 32, 1, "")           \
  INSTANTIATE_SMALL_RANKS(NAME, T, 4) INSTANTIATE_SMALL_RANKS(NAME, T, 8)

INSTANTIATE_ATTN_DTYPE(float32, float)
INSTANTIATE_ATTN_DTYPE(float16, half)
#if __METAL_VERSION__ >= 310
INSTANTIATE_ATTN_DTYPE(bfloat16, bfloat)
#endif
