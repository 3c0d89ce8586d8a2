// Tiled attention kernels for Apple GPUs: neighborhood attention and dense (flash) attention,
// forward and backward, one templated family (element type T, head-dim slice DS).
//
// Layout (heads-last, contiguous; 1-D and 2-D problems padded to 3-D with unit leading axes):
//   q, dout, out [B, Lq0, Lq1, Lq2, H, D|Dv]     k, v [B, Lk0, Lk1, Lk2, Hkv, D|Dv]
//   lse, delta   [B, Lq0, Lq1, Lq2, H] (float)   xk, xv [B, E, Hkv, D|Dv] (additional keys/values)
// Geometry: attn_tile.h. GQA: query head h reads key/value head h / (H / Hkv).
//
// Work split. A threadgroup owns a tile of neighbouring queries (forward, dQ) or keys (dK/dV) in
// one dilation group of one (batch, head); it is a[0] x a[1] x a[2] SIMD-groups, each owning a
// sub-tile of u[0] x u[1] x u[2] = 32 / NG positions. NG lanes share a position and split the head
// dimension in slices of DS (so a lane holds at most 4 DS floats: few registers), their partial dot
// products meeting through simd_shuffle_xor. The union of the tile's windows (keys for a query
// tile, queries for a key tile) is walked in chunks of KC tokens staged in threadgroup memory once
// per threadgroup; every SIMD-group walks the chunk in lock-step, skipping tokens outside its own
// sub-tile's union (a SIMD-uniform test), and each lane applies its own exact window as a mask.
// Scores, the online softmax and every accumulation are float. No atomics: dK/dV walk the inverse
// neighbourhood (attn_tile.h, query_bounds) and loop over the query heads of a key head, so results
// are bit-identical run to run.
//
// Kernels (suffix _<dtype>_<DS>):
//   attn_forward       out, lse                 (NA window + additional keys in one pass)
//   attn_backward_dq   dq, delta = rowsum(dout * out) - dlse
//   attn_backward_dkdv dk, dv                   (NA keys; with dense geometry: additional keys)
#include <metal_stdlib>
using namespace metal;

#include "attn_tile.h"

constant constexpr int kStageBytes = 24576;   // staged chunk of two token arrays
constant constexpr int kMaxChunk = 64;        // tokens per chunk (KC <= kMaxChunk)

// Sum over the NG lanes that share one position (adjacent lanes; NG a power of two).
inline float slice_sum(float v, int NG) {
  for (int m = 1; m < NG; m <<= 1) {
    v += simd_shuffle_xor(v, ushort(m));
  }
  return v;
}

// Coordinates (in the tile's group) of flat index f of a box starting at `lo` with extents `ext`.
inline void box_coord(int f, thread const int* lo, thread const int* ext, thread int* c) {
  c[2] = lo[2] + f % ext[2];
  c[1] = lo[1] + (f / ext[2]) % ext[1];
  c[0] = lo[0] + f / (ext[2] * ext[1]);
}

inline bool in_spans(thread const int* c, thread const Span* s) {
  return c[0] >= s[0].lo && c[0] <= s[0].hi && c[1] >= s[1].lo && c[1] <= s[1].hi &&
         c[2] >= s[2].lo && c[2] <= s[2].hi;
}

// Position of this thread: its SIMD-group's sub-tile and its own place in it.
struct Place {
  int lane, slice;
  int first[3], last[3];     // the SIMD-group's sub-tile (group coordinates, clipped)
  int c[3];                  // this lane's position
  bool valid, sub_empty;
};

inline Place locate_thread(thread const Geom& G, thread const Tile& T, uint tid) {
  Place P;
  const int sg = int(tid) / 32;
  P.lane = int(tid) % 32;
  const int pos = P.lane / G.NG;
  P.slice = P.lane % G.NG;
  int sc[3], lc[3];
  sc[2] = sg % G.a[2]; sc[1] = (sg / G.a[2]) % G.a[1]; sc[0] = sg / (G.a[2] * G.a[1]);
  lc[2] = pos % G.u[2]; lc[1] = (pos / G.u[2]) % G.u[1]; lc[0] = pos / (G.u[2] * G.u[1]);
  P.valid = true;
  P.sub_empty = false;
  for (int ax = 0; ax < 3; ++ax) {
    P.first[ax] = T.origin[ax] + sc[ax] * G.u[ax];
    P.last[ax] = min(P.first[ax] + G.u[ax] - 1, T.glen[ax] - 1);
    P.sub_empty = P.sub_empty || P.first[ax] >= T.glen[ax];
    P.c[ax] = P.first[ax] + lc[ax];
    P.valid = P.valid && P.c[ax] < T.glen[ax];
  }
  return P;
}

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------
template <typename T, int DS>
kernel void attn_forward(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                         device const T* v [[buffer(2)]], device const T* xk [[buffer(3)]],
                         device const T* xv [[buffer(4)]], device T* out [[buffer(5)]],
                         device float* lse [[buffer(6)]], device const int* geom [[buffer(7)]],
                         constant float& scale [[buffer(8)]],
                         uint tg [[threadgroup_position_in_grid]],
                         uint tid [[thread_index_in_threadgroup]],
                         uint nthreads [[threads_per_threadgroup]]) {
  threadgroup T stage[kStageBytes / sizeof(T)];
  const Geom G = load_geom(geom);
  const Tile Tl = locate_tile(G, tg, G.H, G.Lq);
  for (int ax = 0; ax < 3; ++ax) {
    if (Tl.origin[ax] >= Tl.glen[ax]) return;          // the whole tile lies past a short group
  }
  const Place P = locate_thread(G, Tl, tid);
  const int Dp = G.NG * DS, Dvp = G.NG * DS, d0 = P.slice * DS;
  const int hk = Tl.h / (G.H / G.Hkv);
  const int tokens_q = G.Lq[0] * G.Lq[1] * G.Lq[2], tokens_k = G.Lk[0] * G.Lk[1] * G.Lk[2];
  const int row = (Tl.b * tokens_q + token_of(P.c, Tl.grp, G.DIL, G.Lq)) * G.H + Tl.h;

  Span win[3], sub[3], box[3];
  int lo[3], ext[3];
  int vol = 1;
  for (int ax = 0; ax < 3; ++ax) {
    win[ax] = key_span(G, ax, P.valid ? P.c[ax] : 0, Tl.glen[ax]);
    sub[ax].lo = key_span(G, ax, P.first[ax], Tl.glen[ax]).lo;
    sub[ax].hi = key_span(G, ax, P.last[ax], Tl.glen[ax]).hi;
    box[ax].lo = key_span(G, ax, Tl.origin[ax], Tl.glen[ax]).lo;
    box[ax].hi = key_span(G, ax, min(Tl.origin[ax] + Tl.t[ax] - 1, Tl.glen[ax] - 1), Tl.glen[ax]).hi;
    lo[ax] = box[ax].lo;
    ext[ax] = max(box[ax].hi - box[ax].lo + 1, 0);
    vol *= ext[ax];
  }

  float qr[DS], acc[DS];
  for (int d = 0; d < DS; ++d) {
    const int dd = d0 + d;
    qr[d] = (P.valid && dd < G.D) ? float(q[row * G.D + dd]) * scale : 0.0f;
    acc[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int voff = G.KC * Dp;

  // Neighbourhood keys, then the additional keys (every query sees them all).
  const int total = vol + G.E;
  for (int c0 = 0, n = 0; c0 < total; c0 += n) {     // chunks never straddle the two key sets
    const bool extra = c0 >= vol;
    const int base = extra ? c0 - vol : c0;
    n = extra ? min(G.KC, G.E - base) : min(G.KC, vol - c0);
    threadgroup_barrier(mem_flags::mem_threadgroup);      // the previous chunk is consumed
    for (int e = int(tid); e < n * Dp; e += int(nthreads)) {
      const int kk = e / Dp, d = e - kk * Dp;
      int src;
      if (extra) {
        src = ((Tl.b * G.E + base + kk) * G.Hkv + hk);
      } else {
        int kc[3];
        box_coord(base + kk, lo, ext, kc);
        src = (Tl.b * tokens_k + token_of(kc, Tl.grp, G.DIL, G.Lk)) * G.Hkv + hk;
      }
      stage[e] = d < G.D ? (extra ? T(xk[src * G.D + d]) : T(k[src * G.D + d])) : T(0.0f);
    }
    for (int e = int(tid); e < n * Dvp; e += int(nthreads)) {
      const int kk = e / Dvp, d = e - kk * Dvp;
      int src;
      if (extra) {
        src = ((Tl.b * G.E + base + kk) * G.Hkv + hk);
      } else {
        int kc[3];
        box_coord(base + kk, lo, ext, kc);
        src = (Tl.b * tokens_k + token_of(kc, Tl.grp, G.DIL, G.Lk)) * G.Hkv + hk;
      }
      stage[voff + e] = d < G.Dv ? (extra ? T(xv[src * G.Dv + d]) : T(v[src * G.Dv + d])) : T(0.0f);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (P.sub_empty) continue;
    for (int kk = 0; kk < n; ++kk) {
      bool ok = P.valid;
      if (!extra) {
        int kc[3];
        box_coord(base + kk, lo, ext, kc);
        if (!in_spans(kc, sub)) continue;                  // SIMD-uniform
        ok = ok && in_spans(kc, win);
      }
      threadgroup const T* kr = stage + kk * Dp + d0;
      float part = 0.0f;
      for (int d = 0; d < DS; ++d) part += qr[d] * float(kr[d]);
      const float s = slice_sum(part, G.NG);
      if (ok) {
        // NaN-propagating online softmax (metal::max would drop a NaN score).
        const float m_new = s > m ? s : m;
        const float corr = m == m_new ? 1.0f : exp(m - m_new);
        const float p = exp(s - m_new);
        l = l * corr + p;
        threadgroup const T* vr = stage + voff + kk * Dvp + d0;
        for (int d = 0; d < DS; ++d) acc[d] = acc[d] * corr + p * float(vr[d]);
        m = m_new;
      }
    }
  }
  if (!P.valid) return;
  const float inv = 1.0f / l;
  for (int d = 0; d < DS; ++d) {
    if (d0 + d < G.Dv) out[row * G.Dv + d0 + d] = T(acc[d] * inv);
  }
  if (P.slice == 0) lse[row] = m + log(l);
}

// ------------------------------------------------------------------------------------------------
// Backward, part 1: dQ and delta = rowsum(dout * out) - dlse, per query tile
// ------------------------------------------------------------------------------------------------
template <typename T, int DS>
kernel void attn_backward_dq(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                             device const T* v [[buffer(2)]], device const T* xk [[buffer(3)]],
                             device const T* xv [[buffer(4)]], device const T* out [[buffer(5)]],
                             device const T* dout [[buffer(6)]], device const float* lse [[buffer(7)]],
                             device const float* dlse [[buffer(8)]], device T* dq [[buffer(9)]],
                             device float* delta [[buffer(10)]], device const int* geom [[buffer(11)]],
                             constant float& scale [[buffer(12)]],
                             uint tg [[threadgroup_position_in_grid]],
                             uint tid [[thread_index_in_threadgroup]],
                             uint nthreads [[threads_per_threadgroup]]) {
  threadgroup T stage[kStageBytes / sizeof(T)];
  const Geom G = load_geom(geom);
  const Tile Tl = locate_tile(G, tg, G.H, G.Lq);
  for (int ax = 0; ax < 3; ++ax) {
    if (Tl.origin[ax] >= Tl.glen[ax]) return;
  }
  const Place P = locate_thread(G, Tl, tid);
  const int Dp = G.NG * DS, Dvp = G.NG * DS, d0 = P.slice * DS;
  const int hk = Tl.h / (G.H / G.Hkv);
  const int tokens_q = G.Lq[0] * G.Lq[1] * G.Lq[2], tokens_k = G.Lk[0] * G.Lk[1] * G.Lk[2];
  const int row = (Tl.b * tokens_q + token_of(P.c, Tl.grp, G.DIL, G.Lq)) * G.H + Tl.h;

  Span win[3], sub[3];
  int lo[3], ext[3];
  int vol = 1;
  for (int ax = 0; ax < 3; ++ax) {
    win[ax] = key_span(G, ax, P.valid ? P.c[ax] : 0, Tl.glen[ax]);
    sub[ax].lo = key_span(G, ax, P.first[ax], Tl.glen[ax]).lo;
    sub[ax].hi = key_span(G, ax, P.last[ax], Tl.glen[ax]).hi;
    lo[ax] = key_span(G, ax, Tl.origin[ax], Tl.glen[ax]).lo;
    const int hi = key_span(G, ax, min(Tl.origin[ax] + Tl.t[ax] - 1, Tl.glen[ax] - 1), Tl.glen[ax]).hi;
    ext[ax] = max(hi - lo[ax] + 1, 0);
    vol *= ext[ax];
  }

  float qr[DS], gr[DS], dqa[DS];
  float dsum = 0.0f;
  for (int d = 0; d < DS; ++d) {
    const int dd = d0 + d;
    qr[d] = (P.valid && dd < G.D) ? float(q[row * G.D + dd]) * scale : 0.0f;
    gr[d] = (P.valid && dd < G.Dv) ? float(dout[row * G.Dv + dd]) : 0.0f;
    dsum += (P.valid && dd < G.Dv) ? gr[d] * float(out[row * G.Dv + dd]) : 0.0f;
    dqa[d] = 0.0f;
  }
  dsum = slice_sum(dsum, G.NG);
  const float dl = (P.valid && G.has_dlse) ? dlse[row] : 0.0f;
  const float dlt = dsum - dl;
  const float lrow = P.valid ? lse[row] : 0.0f;
  const int voff = G.KC * Dp;

  const int total = vol + G.E;
  for (int c0 = 0, n = 0; c0 < total; c0 += n) {     // chunks never straddle the two key sets
    const bool extra = c0 >= vol;
    const int base = extra ? c0 - vol : c0;
    n = extra ? min(G.KC, G.E - base) : min(G.KC, vol - c0);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int e = int(tid); e < n * Dp; e += int(nthreads)) {
      const int kk = e / Dp, d = e - kk * Dp;
      int src;
      if (extra) {
        src = ((Tl.b * G.E + base + kk) * G.Hkv + hk);
      } else {
        int kc[3];
        box_coord(base + kk, lo, ext, kc);
        src = (Tl.b * tokens_k + token_of(kc, Tl.grp, G.DIL, G.Lk)) * G.Hkv + hk;
      }
      stage[e] = d < G.D ? (extra ? T(xk[src * G.D + d]) : T(k[src * G.D + d])) : T(0.0f);
    }
    for (int e = int(tid); e < n * Dvp; e += int(nthreads)) {
      const int kk = e / Dvp, d = e - kk * Dvp;
      int src;
      if (extra) {
        src = ((Tl.b * G.E + base + kk) * G.Hkv + hk);
      } else {
        int kc[3];
        box_coord(base + kk, lo, ext, kc);
        src = (Tl.b * tokens_k + token_of(kc, Tl.grp, G.DIL, G.Lk)) * G.Hkv + hk;
      }
      stage[voff + e] = d < G.Dv ? (extra ? T(xv[src * G.Dv + d]) : T(v[src * G.Dv + d])) : T(0.0f);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (P.sub_empty) continue;
    for (int kk = 0; kk < n; ++kk) {
      bool ok = P.valid;
      if (!extra) {
        int kc[3];
        box_coord(base + kk, lo, ext, kc);
        if (!in_spans(kc, sub)) continue;                  // SIMD-uniform
        ok = ok && in_spans(kc, win);
      }
      threadgroup const T* kr = stage + kk * Dp + d0;
      threadgroup const T* vr = stage + voff + kk * Dvp + d0;
      float ps = 0.0f, pd = 0.0f;
      for (int d = 0; d < DS; ++d) {
        ps += qr[d] * float(kr[d]);
        pd += gr[d] * float(vr[d]);
      }
      const float s = slice_sum(ps, G.NG);
      const float dp = slice_sum(pd, G.NG);
      if (ok) {
        const float ds = exp(s - lrow) * (dp - dlt);
        for (int d = 0; d < DS; ++d) dqa[d] += ds * float(kr[d]);
      }
    }
  }
  if (!P.valid) return;
  for (int d = 0; d < DS; ++d) {
    if (d0 + d < G.D) dq[row * G.D + d0 + d] = T(dqa[d] * scale);
  }
  if (P.slice == 0) delta[row] = dlt;
}

// ------------------------------------------------------------------------------------------------
// Backward, part 2: dK and dV, per key tile, over the queries whose windows hold the keys
// ------------------------------------------------------------------------------------------------
template <typename T, int DS>
kernel void attn_backward_dkdv(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                               device const T* v [[buffer(2)]], device const T* dout [[buffer(3)]],
                               device const float* lse [[buffer(4)]], device const float* delta [[buffer(5)]],
                               device T* dk [[buffer(6)]], device T* dv [[buffer(7)]],
                               device const int* geom [[buffer(8)]], constant float& scale [[buffer(9)]],
                               uint tg [[threadgroup_position_in_grid]],
                               uint tid [[thread_index_in_threadgroup]],
                               uint nthreads [[threads_per_threadgroup]]) {
  threadgroup T stage[kStageBytes / sizeof(T)];
  threadgroup float stats[2 * kMaxChunk];
  const Geom G = load_geom(geom);
  const Tile Tl = locate_tile(G, tg, G.Hkv, G.Lk);     // a tile of keys of key head Tl.h
  for (int ax = 0; ax < 3; ++ax) {
    if (Tl.origin[ax] >= Tl.glen[ax]) return;
  }
  const Place P = locate_thread(G, Tl, tid);
  const int Dp = G.NG * DS, Dvp = G.NG * DS, d0 = P.slice * DS;
  const int hk = Tl.h, groups = G.H / G.Hkv;
  const int tokens_q = G.Lq[0] * G.Lq[1] * G.Lq[2], tokens_k = G.Lk[0] * G.Lk[1] * G.Lk[2];
  const int krow = (Tl.b * tokens_k + token_of(P.c, Tl.grp, G.DIL, G.Lk)) * G.Hkv + hk;

  // Query positions of this key group: the same group in NA (queries and keys share extents),
  // the whole query space in dense attention.
  int qlen[3];
  for (int ax = 0; ax < 3; ++ax) qlen[ax] = G.dense ? G.Lq[ax] : Tl.glen[ax];
  Span sub[3];
  int lo[3], ext[3];
  int vol = 1;
  for (int ax = 0; ax < 3; ++ax) {
    sub[ax].lo = query_bounds(G, ax, P.first[ax], qlen[ax]).lo;
    sub[ax].hi = query_bounds(G, ax, P.last[ax], qlen[ax]).hi;
    lo[ax] = query_bounds(G, ax, Tl.origin[ax], qlen[ax]).lo;
    const int hi = query_bounds(G, ax, min(Tl.origin[ax] + Tl.t[ax] - 1, Tl.glen[ax] - 1), qlen[ax]).hi;
    ext[ax] = max(hi - lo[ax] + 1, 0);
    vol *= ext[ax];
  }

  float kr[DS], vr[DS], dka[DS], dva[DS];
  for (int d = 0; d < DS; ++d) {
    const int dd = d0 + d;
    kr[d] = (P.valid && dd < G.D) ? float(k[krow * G.D + dd]) : 0.0f;
    vr[d] = (P.valid && dd < G.Dv) ? float(v[krow * G.Dv + dd]) : 0.0f;
    dka[d] = 0.0f;
    dva[d] = 0.0f;
  }
  const int voff = G.KC * Dp;
  int grp_q[3];
  for (int ax = 0; ax < 3; ++ax) grp_q[ax] = G.dense ? 0 : Tl.grp[ax];

  for (int gh = 0; gh < groups; ++gh) {
    const int h = hk * groups + gh;
    for (int c0 = 0; c0 < vol; c0 += G.KC) {
      const int n = min(G.KC, vol - c0);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int e = int(tid); e < n * Dp; e += int(nthreads)) {
        const int ii = e / Dp, d = e - ii * Dp;
        int qc[3];
        box_coord(c0 + ii, lo, ext, qc);
        const int src = (Tl.b * tokens_q + token_of(qc, grp_q, G.DIL, G.Lq)) * G.H + h;
        stage[e] = d < G.D ? T(q[src * G.D + d]) : T(0.0f);
      }
      for (int e = int(tid); e < n * Dvp; e += int(nthreads)) {
        const int ii = e / Dvp, d = e - ii * Dvp;
        int qc[3];
        box_coord(c0 + ii, lo, ext, qc);
        const int src = (Tl.b * tokens_q + token_of(qc, grp_q, G.DIL, G.Lq)) * G.H + h;
        stage[voff + e] = d < G.Dv ? T(dout[src * G.Dv + d]) : T(0.0f);
      }
      for (int ii = int(tid); ii < n; ii += int(nthreads)) {
        int qc[3];
        box_coord(c0 + ii, lo, ext, qc);
        const int src = (Tl.b * tokens_q + token_of(qc, grp_q, G.DIL, G.Lq)) * G.H + h;
        stats[ii] = lse[src];
        stats[kMaxChunk + ii] = delta[src];
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      if (P.sub_empty) continue;
      for (int ii = 0; ii < n; ++ii) {
        int qc[3];
        box_coord(c0 + ii, lo, ext, qc);
        if (!in_spans(qc, sub)) continue;                  // SIMD-uniform
        bool ok = P.valid;
        for (int ax = 0; ax < 3; ++ax) {
          const Span w = key_span(G, ax, qc[ax], qlen[ax]);
          ok = ok && P.c[ax] >= w.lo && P.c[ax] <= w.hi;
        }
        threadgroup const T* qs = stage + ii * Dp + d0;
        threadgroup const T* gs = stage + voff + ii * Dvp + d0;
        float ps = 0.0f, pd = 0.0f;
        for (int d = 0; d < DS; ++d) {
          ps += float(qs[d]) * kr[d];
          pd += float(gs[d]) * vr[d];
        }
        const float s = slice_sum(ps, G.NG) * scale;
        const float dp = slice_sum(pd, G.NG);
        if (ok) {
          const float p = exp(s - stats[ii]);
          const float ds = p * (dp - stats[kMaxChunk + ii]);
          for (int d = 0; d < DS; ++d) {
            dva[d] += p * float(gs[d]);
            dka[d] += ds * float(qs[d]);
          }
        }
      }
    }
  }
  if (!P.valid) return;
  for (int d = 0; d < DS; ++d) {
    if (d0 + d < G.D) dk[krow * G.D + d0 + d] = T(dka[d] * scale);
    if (d0 + d < G.Dv) dv[krow * G.Dv + d0 + d] = T(dva[d]);
  }
}

#define INSTANTIATE_ATTN(NAME, T, DS)                                                              \
  template [[host_name("attn_forward_" #NAME "_" #DS)]] kernel void attn_forward<T, DS>(            \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* xk [[buffer(3)]], device const T* xv [[buffer(4)]], device T* out [[buffer(5)]], \
      device float* lse [[buffer(6)]], device const int* geom [[buffer(7)]],                       \
      constant float& scale [[buffer(8)]], uint tg [[threadgroup_position_in_grid]],              \
      uint tid [[thread_index_in_threadgroup]], uint nthreads [[threads_per_threadgroup]]);        \
  template [[host_name("attn_backward_dq_" #NAME "_" #DS)]] kernel void attn_backward_dq<T, DS>(    \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* xk [[buffer(3)]], device const T* xv [[buffer(4)]], device const T* out [[buffer(5)]], \
      device const T* dout [[buffer(6)]], device const float* lse [[buffer(7)]],                  \
      device const float* dlse [[buffer(8)]], device T* dq [[buffer(9)]], device float* delta [[buffer(10)]], \
      device const int* geom [[buffer(11)]], constant float& scale [[buffer(12)]],                 \
      uint tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],          \
      uint nthreads [[threads_per_threadgroup]]);                                                  \
  template [[host_name("attn_backward_dkdv_" #NAME "_" #DS)]] kernel void attn_backward_dkdv<T, DS>( \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* dout [[buffer(3)]], device const float* lse [[buffer(4)]],                   \
      device const float* delta [[buffer(5)]], device T* dk [[buffer(6)]], device T* dv [[buffer(7)]], \
      device const int* geom [[buffer(8)]], constant float& scale [[buffer(9)]],                   \
      uint tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],          \
      uint nthreads [[threads_per_threadgroup]]);

#define INSTANTIATE_ATTN_DTYPE(NAME, T) INSTANTIATE_ATTN(NAME, T, 16) INSTANTIATE_ATTN(NAME, T, 32)

INSTANTIATE_ATTN_DTYPE(float32, float)
INSTANTIATE_ATTN_DTYPE(float16, half)
#if __METAL_VERSION__ >= 310
INSTANTIATE_ATTN_DTYPE(bfloat16, bfloat)
#endif
