// Dense (flash) attention on 8x8 simdgroup matrices: forward, dQ, dK/dV. The matrix variant of
// the dense path of attention.metal (same layouts, LSE and delta conventions, causal rule), chosen
// by the host (natten_mps/backends/metal_flash.py).
//
// Layout (heads-last, contiguous): q, out, dout [B, Lq, H, D|Dv]; k, v [B, Lk, Hkv, D|Dv];
// lse, delta, dlse [B, Lq, H] float (natural log). GQA: query head h reads key head h / (H / Hkv).
// Causal is top-left: query i sees keys j <= i (Lq != Lk allowed). geom (int32):
//   [0] Lq [1] Lk [2] H [3] Hkv [4] D [5] Dv [6] causal [7] has_dlse
//
// Blocking. A threadgroup is 4 SIMD-groups (128 threads); each SIMD-group owns 8 rows (queries in
// the forward and dQ, keys in dK/dV), the threadgroup 32. Its own rows' operands live in 8x8 float
// fragments in registers (DP / 8 of each, DP the head dim padded to a multiple of 8: 2 DP / 8
// floats a lane per operand); the other side (K and V, or Q and dO) is staged in threadgroup
// memory in blocks of BK rows, zero-padded to DP columns and past the sequence end, as the input
// type (half stays half) or as float for bfloat (unpacked once when staged, not on every read):
// at most kStageBytes = 12 KB (16 KB at DP = 256 float), whatever BK that allows (8..32). Every
// score and product is simdgroup_multiply_accumulate on float fragments (float accumulation).
//
// The softmax works on the score fragments in place (thread_elements): a lane holds two scores of
// one row; row maxima and sums are two simd_shuffle_xor steps (sg_frag.h). Scores are in base 2
// (q pre-scaled by scale * log2 e). Masked scores are -inf by selection; on the causal diagonal
// blocks the products that consume the probabilities skip masked terms (mma_masked), so a
// non-finite key or value reaches exactly the queries that see it. No atomics: dK/dV loop over the
// queries (and the query heads of a key head) in a fixed order, so results are bit-identical.
//
// Kernels (suffix _<dtype>_<DP>):
//   flash_forward      out, lse
//   flash_backward_dq  dq, delta = rowsum(dout * out) - dlse
//   flash_backward_dkdv dk, dv (needs delta from flash_backward_dq)
//   na2d_forward       out, lse of 2-D neighborhood attention (large windows; see its header)
//   na2d_backward_dq   dq, delta of 2-D neighborhood attention
//   na2d_backward_dkdv dk, dv of 2-D neighborhood attention
#include <metal_stdlib>
using namespace metal;

#include "na_window.h"
#include "sg_frag.h"

constant constexpr int kSimdgroups = 4;
constant constexpr int kRows = 8;                         // rows a SIMD-group owns
constant constexpr int kTile = kSimdgroups * kRows;       // rows a threadgroup owns
constant constexpr int kThreads = kSimdgroups * 32;
constant constexpr int kStageBytes = 12288;
constant constexpr float kLog2e = 1.4426950408889634f;
constant constexpr float kLn2 = 0.6931471805599453f;

// Staged element type: the input type, float for bfloat (no native conversion before Apple9).
template <typename T> struct Staged { typedef T type; };
#if __METAL_VERSION__ >= 310
template <> struct Staged<bfloat> { typedef float type; };
#endif

// Rows of a staged block: two arrays of BK x DP elements in kStageBytes, a multiple of 8, 8..32.
template <typename S, int DP> constexpr int block_rows() {
  return (kStageBytes / (int(sizeof(S)) * 2 * DP)) / 8 * 8 < 8 ? 8
       : (kStageBytes / (int(sizeof(S)) * 2 * DP)) / 8 * 8 > 32 ? 32
       : (kStageBytes / (int(sizeof(S)) * 2 * DP)) / 8 * 8;
}

struct Dims {
  int Lq, Lk, H, Hkv, D, Dv;
  bool causal, has_dlse;
};

inline Dims load_dims(constant int* geom) {
  Dims g;
  g.Lq = geom[0]; g.Lk = geom[1]; g.H = geom[2]; g.Hkv = geom[3]; g.D = geom[4]; g.Dv = geom[5];
  g.causal = geom[6] != 0; g.has_dlse = geom[7] != 0;
  return g;
}

// Stage rows [r0, r0 + BK) of one head of a [*, L, heads, width] tensor as S, zero past L and
// past width: the threadgroup's threads take consecutive elements (coalesced rows).
template <typename S, int DP, int BK, typename T>
inline void stage_rows(threadgroup S* dst, device const T* src, int L, int heads, int head, int width, int batch,
                       int r0, uint tid) {
  for (int e = int(tid); e < BK * DP; e += kThreads) {
    const int r = e / DP, c = e - r * DP, row = r0 + r;
    S x = S(0);
    if (row < L && c < width) x = S(src[((batch * L + row) * heads + head) * width + c]);
    dst[e] = x;
  }
}

// This lane's two elements of the 8 x DP fragments of rows row0.. of one head (zero outside),
// times `mul`.
template <int NF, typename T>
inline void load_rows(thread simdgroup_float8x8 (&f)[NF], device const T* src, int L, int heads, int head,
                      int width, int batch, int row0, float mul, FragPos p) {
  const int row = row0 + p.row;
  const bool in = row < L;
  const int base = ((batch * L + (in ? row : 0)) * heads + head) * width;
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      f[j].thread_elements()[e] = (in && c < width) ? float(src[base + c]) * mul : 0.0f;
    }
  }
}

template <int NF, typename T>
inline void store_rows(thread simdgroup_float8x8 (&f)[NF], device T* dst, int L, int heads, int head, int width,
                       int batch, int row0, float mul, FragPos p) {
  const int row = row0 + p.row;
  if (row >= L) return;
  const int base = ((batch * L + row) * heads + head) * width;
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      if (c < width) dst[base + c] = T(f[j].thread_elements()[e] * mul);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------
template <typename T, int DP>
kernel void flash_forward(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                          device const T* v [[buffer(2)]], device T* out [[buffer(3)]],
                          device float* lse [[buffer(4)]], constant int* geom [[buffer(5)]],
                          constant float& scale [[buffer(6)]], uint3 tg [[threadgroup_position_in_grid]],
                          uint tid [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                          ushort lane [[thread_index_in_simdgroup]]) {
  typedef typename Staged<T>::type S;
  constexpr int NF = DP / 8, BK = block_rows<S, DP>(), NT = BK / 8;
  threadgroup S ks[BK * DP];
  threadgroup S vs[BK * DP];
  const Dims g = load_dims(geom);
  const int b = int(tg.z), h = int(tg.y), hk = h / (g.H / g.Hkv);
  const int q0 = int(tg.x) * kTile + int(sg) * kRows;   // this SIMD-group's first query
  const FragPos p = frag_pos(lane);
  const int qi = q0 + p.row;                             // this lane's query

  simdgroup_float8x8 qf[NF], of[NF];
  load_rows<NF>(qf, q, g.Lq, g.H, h, g.D, b, q0, scale * kLog2e, p);
  for (int j = 0; j < NF; ++j) of[j] = frag_zero();
  float m = -INFINITY, l = 0.0f;                        // running maximum (base 2), this lane's sum

  const int kend = g.causal ? min(g.Lk, int(tg.x) * kTile + kTile) : g.Lk;
  for (int k0 = 0; k0 < kend; k0 += BK) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
    stage_rows<S, DP, BK>(ks, k, g.Lk, g.Hkv, hk, g.D, b, k0, tid);
    stage_rows<S, DP, BK>(vs, v, g.Lk, g.Hkv, hk, g.Dv, b, k0, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);

    simdgroup_float8x8 sf[NT];
    float mloc = -INFINITY;
    for (int t = 0; t < NT; ++t) {
      const int kt = k0 + 8 * t;                         // first key of the sub-block
      if (kt >= kend || (g.causal && kt > q0 + kRows - 1)) continue;   // nothing visible (SIMD-uniform)
      sf[t] = frag_zero();
      for (int j = 0; j < NF; ++j) {
        simdgroup_float8x8 kf;
        frag_load_t(kf, ks, DP, 8 * t, 8 * j, p);
        simdgroup_multiply_accumulate(sf[t], qf[j], kf, sf[t]);
      }
      for (int e = 0; e < 2; ++e) {
        const int key = kt + p.col + e;
        const bool seen = key < g.Lk && (!g.causal || key <= qi);
        const float s = seen ? sf[t].thread_elements()[e] : -INFINITY;
        sf[t].thread_elements()[e] = s;
        mloc = max(mloc, s);
      }
    }
    const float mnew = max(m, row_max(mloc));
    const float mu = mnew == -INFINITY ? 0.0f : mnew;
    const float alpha = exp2(m - mu);
    m = mnew;
    l *= alpha;
    for (int j = 0; j < NF; ++j) {
      of[j].thread_elements()[0] *= alpha;
      of[j].thread_elements()[1] *= alpha;
    }
    for (int t = 0; t < NT; ++t) {
      const int kt = k0 + 8 * t;
      if (kt >= kend || (g.causal && kt > q0 + kRows - 1)) continue;
      for (int e = 0; e < 2; ++e) {
        const float pe = exp2(sf[t].thread_elements()[e] - mu);
        sf[t].thread_elements()[e] = pe;
        l += pe;
      }
      const bool diagonal = g.causal && kt + kRows - 1 > q0;
      for (int j = 0; j < NF; ++j) {
        if (diagonal) {
          mma_masked(of[j], sf[t], vs, DP, 8 * t, 8 * j, 0, qi - kt, p);
        } else {
          simdgroup_float8x8 vf;
          frag_load(vf, vs, DP, 8 * t, 8 * j, p);
          simdgroup_multiply_accumulate(of[j], sf[t], vf, of[j]);
        }
      }
    }
  }
  l = row_sum(l);
  store_rows<NF>(of, out, g.Lq, g.H, h, g.Dv, b, q0, 1.0f / l, p);
  if (p.col == 0 && qi < g.Lq) lse[(b * g.Lq + qi) * g.H + h] = (m + log2(l)) * kLn2;
}

// ---------------------------------------------------------------------------------------------
// Backward: dQ (and delta)
// ---------------------------------------------------------------------------------------------
template <typename T, int DP>
kernel void flash_backward_dq(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                              device const T* v [[buffer(2)]], device const T* out [[buffer(3)]],
                              device const T* dout [[buffer(4)]], device const float* lse [[buffer(5)]],
                              device const float* dlse [[buffer(6)]], device T* dq [[buffer(7)]],
                              device float* delta [[buffer(8)]], constant int* geom [[buffer(9)]],
                              constant float& scale [[buffer(10)]], uint3 tg [[threadgroup_position_in_grid]],
                              uint tid [[thread_index_in_threadgroup]],
                              ushort sg [[simdgroup_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]]) {
  typedef typename Staged<T>::type S;
  constexpr int NF = DP / 8, BK = block_rows<S, DP>(), NT = BK / 8;
  threadgroup S ks[BK * DP];
  threadgroup S vs[BK * DP];
  const Dims g = load_dims(geom);
  const int b = int(tg.z), h = int(tg.y), hk = h / (g.H / g.Hkv);
  const int q0 = int(tg.x) * kTile + int(sg) * kRows;
  const FragPos p = frag_pos(lane);
  const int qi = q0 + p.row;
  const bool qin = qi < g.Lq;
  const int row = (b * g.Lq + (qin ? qi : 0)) * g.H + h;

  simdgroup_float8x8 qf[NF], df[NF], dqf[NF];
  load_rows<NF>(qf, q, g.Lq, g.H, h, g.D, b, q0, scale * kLog2e, p);
  load_rows<NF>(df, dout, g.Lq, g.H, h, g.Dv, b, q0, 1.0f, p);
  // delta = rowsum(dout * out) - dlse: this lane's columns, then the row's four lanes
  float dl = 0.0f;
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      if (qin && c < g.Dv) dl += df[j].thread_elements()[e] * float(out[row * g.Dv + c]);
    }
  }
  dl = row_sum(dl);
  if (g.has_dlse && qin) dl -= dlse[row];
  if (p.col == 0 && qin) delta[row] = dl;
  const float lse2 = qin ? lse[row] * kLog2e : 0.0f;
  for (int j = 0; j < NF; ++j) dqf[j] = frag_zero();

  const int kend = g.causal ? min(g.Lk, int(tg.x) * kTile + kTile) : g.Lk;
  for (int k0 = 0; k0 < kend; k0 += BK) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
    stage_rows<S, DP, BK>(ks, k, g.Lk, g.Hkv, hk, g.D, b, k0, tid);
    stage_rows<S, DP, BK>(vs, v, g.Lk, g.Hkv, hk, g.Dv, b, k0, tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int t = 0; t < NT; ++t) {
      const int kt = k0 + 8 * t;
      if (kt >= kend || (g.causal && kt > q0 + kRows - 1)) continue;
      simdgroup_float8x8 sf = frag_zero(), dpf = frag_zero();
      for (int j = 0; j < NF; ++j) {
        simdgroup_float8x8 kf, vf;
        frag_load_t(kf, ks, DP, 8 * t, 8 * j, p);
        simdgroup_multiply_accumulate(sf, qf[j], kf, sf);
        frag_load_t(vf, vs, DP, 8 * t, 8 * j, p);
        simdgroup_multiply_accumulate(dpf, df[j], vf, dpf);
      }
      for (int e = 0; e < 2; ++e) {
        const int key = kt + p.col + e;
        const bool seen = qin && key < g.Lk && (!g.causal || key <= qi);
        const float pe = exp2(sf.thread_elements()[e] - lse2);
        sf.thread_elements()[e] = seen ? pe * (dpf.thread_elements()[e] - dl) : 0.0f;   // dS
      }
      const bool diagonal = g.causal && kt + kRows - 1 > q0;
      for (int j = 0; j < NF; ++j) {
        if (diagonal) {
          mma_masked(dqf[j], sf, ks, DP, 8 * t, 8 * j, 0, qi - kt, p);
        } else {
          simdgroup_float8x8 kf;
          frag_load(kf, ks, DP, 8 * t, 8 * j, p);
          simdgroup_multiply_accumulate(dqf[j], sf, kf, dqf[j]);
        }
      }
    }
  }
  store_rows<NF>(dqf, dq, g.Lq, g.H, h, g.D, b, q0, scale, p);
}

// ---------------------------------------------------------------------------------------------
// Backward: dK, dV (rows are keys; queries staged; every query head of the key head in turn)
// ---------------------------------------------------------------------------------------------
template <typename T, int DP>
kernel void flash_backward_dkdv(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                                device const T* v [[buffer(2)]], device const T* dout [[buffer(3)]],
                                device const float* lse [[buffer(4)]], device const float* delta [[buffer(5)]],
                                device T* dk [[buffer(6)]], device T* dv [[buffer(7)]],
                                constant int* geom [[buffer(8)]], constant float& scale [[buffer(9)]],
                                uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                                ushort sg [[simdgroup_index_in_threadgroup]],
                                ushort lane [[thread_index_in_simdgroup]]) {
  typedef typename Staged<T>::type S;
  constexpr int NF = DP / 8, BK = block_rows<S, DP>(), NT = BK / 8;
  threadgroup S qs[BK * DP];
  threadgroup S ds[BK * DP];
  threadgroup float lses[BK];
  threadgroup float dls[BK];
  const Dims g = load_dims(geom);
  const int b = int(tg.z), hk = int(tg.y), G = g.H / g.Hkv;
  const int j0 = int(tg.x) * kTile + int(sg) * kRows;   // this SIMD-group's first key
  const FragPos p = frag_pos(lane);
  const int kj = j0 + p.row;                             // this lane's key

  simdgroup_float8x8 kf[NF], vf[NF], dkf[NF], dvf[NF];
  load_rows<NF>(kf, k, g.Lk, g.Hkv, hk, g.D, b, j0, scale * kLog2e, p);
  load_rows<NF>(vf, v, g.Lk, g.Hkv, hk, g.Dv, b, j0, 1.0f, p);
  for (int j = 0; j < NF; ++j) { dkf[j] = frag_zero(); dvf[j] = frag_zero(); }

  const int qstart = g.causal ? (int(tg.x) * kTile) / BK * BK : 0;   // queries i >= j only
  for (int gi = 0; gi < G; ++gi) {
    const int h = hk * G + gi;
    for (int i0 = qstart; i0 < g.Lq; i0 += BK) {
      threadgroup_barrier(mem_flags::mem_threadgroup);
      stage_rows<S, DP, BK>(qs, q, g.Lq, g.H, h, g.D, b, i0, tid);
      stage_rows<S, DP, BK>(ds, dout, g.Lq, g.H, h, g.Dv, b, i0, tid);
      if (int(tid) < BK) {
        const int i = i0 + int(tid);
        lses[tid] = i < g.Lq ? lse[(b * g.Lq + i) * g.H + h] * kLog2e : 0.0f;
        dls[tid] = i < g.Lq ? delta[(b * g.Lq + i) * g.H + h] : 0.0f;
      }
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (int t = 0; t < NT; ++t) {
        const int it = i0 + 8 * t;                       // first query of the sub-block
        if (it >= g.Lq || (g.causal && it + kRows - 1 < j0)) continue;   // nothing visible
        simdgroup_float8x8 sf = frag_zero(), dpf = frag_zero();   // S^T, dP^T: rows keys, columns queries
        for (int j = 0; j < NF; ++j) {
          simdgroup_float8x8 qf, df;
          frag_load_t(qf, qs, DP, 8 * t, 8 * j, p);
          simdgroup_multiply_accumulate(sf, kf[j], qf, sf);
          frag_load_t(df, ds, DP, 8 * t, 8 * j, p);
          simdgroup_multiply_accumulate(dpf, vf[j], df, dpf);
        }
        simdgroup_float8x8 pf;
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * t + p.col + e, i = i0 + c;
          const bool seen = kj < g.Lk && i < g.Lq && (!g.causal || i >= kj);
          const float pe = seen ? exp2(sf.thread_elements()[e] - lses[c]) : 0.0f;
          pf.thread_elements()[e] = pe;
          sf.thread_elements()[e] = seen ? pe * (dpf.thread_elements()[e] - dls[c]) : 0.0f;   // dS^T
        }
        const bool diagonal = g.causal && it < j0 + kRows - 1;
        for (int j = 0; j < NF; ++j) {
          if (diagonal) {
            mma_masked(dvf[j], pf, ds, DP, 8 * t, 8 * j, kj - it, 7, p);
            mma_masked(dkf[j], sf, qs, DP, 8 * t, 8 * j, kj - it, 7, p);
          } else {
            simdgroup_float8x8 df, qf;
            frag_load(df, ds, DP, 8 * t, 8 * j, p);
            simdgroup_multiply_accumulate(dvf[j], pf, df, dvf[j]);
            frag_load(qf, qs, DP, 8 * t, 8 * j, p);
            simdgroup_multiply_accumulate(dkf[j], sf, qf, dkf[j]);
          }
        }
      }
    }
  }
  store_rows<NF>(dkf, dk, g.Lk, g.Hkv, hk, g.D, b, j0, scale, p);
  store_rows<NF>(dvf, dv, g.Lk, g.Hkv, hk, g.Dv, b, j0, 1.0f, p);
}

// ---------------------------------------------------------------------------------------------
// 2-D neighborhood attention forward (large windows): scores of a query tile against its staged
// window box as matrix products, each lane masked to its exact window.
// ---------------------------------------------------------------------------------------------
// q, out [B, L0, L1, H, D|Dv]; k, v [B, L0, L1, Hkv, D|Dv]; lse [B, L0, L1, H]. Windows: NATTEN's
// rule per axis (na_window.h) in dilation-group coordinates. geom (int32):
//   [0] B [1] H [2] Hkv [3] D [4] Dv [5, 6] L [7, 8] K [9, 10] stride [11, 12] dilation
//   [13, 14] causal [15] tiles along axis 1 (of the longest dilation group, 8 queries a tile)
// Grid: x = tile (4 rows of axis 0 x 8 queries of axis 1 of one dilation group), y = head,
// z = batch * dilation[0] * dilation[1] + group. SIMD-group s owns row 4 ty + s, its lanes' rows of
// the fragments the 8 queries x0.. of that row. The box (the union of the tile's windows) is walked
// row by row, BK columns a staged block. The value products run as matrix products unless a staged
// block holds a non-finite value (a threadgroup flag set while staging): then mma_masked skips the
// terms outside each lane's window, so a NaN reaches exactly the queries whose window holds it.
struct NaGeom {
  int B, H, Hkv, D, Dv;
  int L[2], K[2], S[2], DIL[2];
  bool C[2];
  int tiles1;
};

inline NaGeom load_na_geom(constant int* g) {
  NaGeom G;
  G.B = g[0]; G.H = g[1]; G.Hkv = g[2]; G.D = g[3]; G.Dv = g[4];
  for (int a = 0; a < 2; ++a) {
    G.L[a] = g[5 + a]; G.K[a] = g[7 + a]; G.S[a] = g[9 + a]; G.DIL[a] = g[11 + a]; G.C[a] = g[13 + a] != 0;
  }
  G.tiles1 = g[15];
  return G;
}

inline int na_group_len(int length, int dilation, int grp) {
  return length / dilation + (grp < length % dilation ? 1 : 0);
}

template <typename T, int DP>
kernel void na2d_forward(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                         device const T* v [[buffer(2)]], device T* out [[buffer(3)]],
                         device float* lse [[buffer(4)]], constant int* geom [[buffer(5)]],
                         constant float& scale [[buffer(6)]], uint3 tg [[threadgroup_position_in_grid]],
                         uint tid [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                         ushort lane [[thread_index_in_simdgroup]]) {
  typedef typename Staged<T>::type S;
  constexpr int NF = DP / 8, BK = block_rows<S, DP>(), NT = BK / 8;
  threadgroup S ks[BK * DP];
  threadgroup S vs[BK * DP];
  threadgroup int bad[kSimdgroups];
  const NaGeom g = load_na_geom(geom);
  const int ngroups = g.DIL[0] * g.DIL[1];
  const int b = int(tg.z) / ngroups, grp = int(tg.z) % ngroups, g0 = grp / g.DIL[1], g1 = grp % g.DIL[1];
  const int h = int(tg.y), hk = h / (g.H / g.Hkv);
  const int len0 = na_group_len(g.L[0], g.DIL[0], g0), len1 = na_group_len(g.L[1], g.DIL[1], g1);
  const int t0 = int(tg.x) / g.tiles1, t1 = int(tg.x) % g.tiles1;
  const int y0 = t0 * kSimdgroups, x0 = t1 * kRows;
  if (y0 >= len0 || x0 >= len1) return;                  // the whole threadgroup: no barrier is skipped
  const FragPos p = frag_pos(lane);
  const int y = y0 + int(sg), x = x0 + p.row;             // this lane's query (group coordinates)
  const bool row_in = y < len0, valid = row_in && x < len1;
  const AxisWindowT<int> wy = na_axis_window(min(y, len0 - 1), len0, g.K[0], g.S[0], g.C[0]);
  const AxisWindowT<int> wx = na_axis_window(min(x, len1 - 1), len1, g.K[1], g.S[1], g.C[1]);
  // the box: windows of the tile's first and last queries (both ends never decrease with the query)
  const int ylo = na_axis_window(y0, len0, g.K[0], g.S[0], g.C[0]).lo;
  const int yhi = na_axis_window(min(y0 + kSimdgroups - 1, len0 - 1), len0, g.K[0], g.S[0], g.C[0]).hi;
  const int xlo = na_axis_window(x0, len1, g.K[1], g.S[1], g.C[1]).lo;
  const int xhi = na_axis_window(min(x0 + kRows - 1, len1 - 1), len1, g.K[1], g.S[1], g.C[1]).hi;

  simdgroup_float8x8 qf[NF], of[NF];
  const int qtok = (b * g.L[0] + y * g.DIL[0] + g0) * g.L[1] + x * g.DIL[1] + g1;
  const float qmul = scale * kLog2e;
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      qf[j].thread_elements()[e] = (valid && c < g.D) ? float(q[(qtok * g.H + h) * g.D + c]) * qmul : 0.0f;
    }
    of[j] = frag_zero();
  }
  float m = -INFINITY, l = 0.0f;

  for (int ky = ylo; ky <= yhi; ++ky) {
    const bool row_seen = row_in && ky >= wy.lo && ky <= wy.hi;   // SIMD-group uniform
    const int krow = (b * g.L[0] + ky * g.DIL[0] + g0) * g.L[1];
    for (int c0 = xlo; c0 <= xhi; c0 += BK) {
      threadgroup_barrier(mem_flags::mem_threadgroup);
      bool nonfinite = false;
      for (int e = int(tid); e < BK * DP; e += kThreads) {
        const int r = e / DP, c = e - r * DP, kx = c0 + r;
        S kk = S(0), vv = S(0);
        if (kx <= xhi) {
          const int tok = (krow + kx * g.DIL[1] + g1) * g.Hkv + hk;
          if (c < g.D) kk = S(k[tok * g.D + c]);
          if (c < g.Dv) {
            vv = S(v[tok * g.Dv + c]);
            nonfinite = nonfinite || !isfinite(float(vv));
          }
        }
        ks[e] = kk;
        vs[e] = vv;
      }
      const int any_bad = simd_max(nonfinite ? 1 : 0);
      if (lane == 0) bad[sg] = any_bad;
      threadgroup_barrier(mem_flags::mem_threadgroup);
      if (!row_seen) continue;
      const bool masked_pv = (bad[0] | bad[1] | bad[2] | bad[3]) != 0;

      simdgroup_float8x8 sf[NT];
      float mloc = -INFINITY;
      for (int t = 0; t < NT; ++t) {
        const int kt = c0 + 8 * t;
        if (kt > xhi) continue;                           // SIMD-group uniform
        sf[t] = frag_zero();
        for (int j = 0; j < NF; ++j) {
          simdgroup_float8x8 kf;
          frag_load_t(kf, ks, DP, 8 * t, 8 * j, p);
          simdgroup_multiply_accumulate(sf[t], qf[j], kf, sf[t]);
        }
        for (int e = 0; e < 2; ++e) {
          const int kx = kt + p.col + e;
          const bool seen = valid && kx >= wx.lo && kx <= wx.hi;
          const float sv = seen ? sf[t].thread_elements()[e] : -INFINITY;
          sf[t].thread_elements()[e] = sv;
          mloc = max(mloc, sv);
        }
      }
      const float mnew = max(m, row_max(mloc));
      const float mu = mnew == -INFINITY ? 0.0f : mnew;
      const float alpha = exp2(m - mu);
      m = mnew;
      l *= alpha;
      for (int j = 0; j < NF; ++j) {
        of[j].thread_elements()[0] *= alpha;
        of[j].thread_elements()[1] *= alpha;
      }
      for (int t = 0; t < NT; ++t) {
        const int kt = c0 + 8 * t;
        if (kt > xhi) continue;
        for (int e = 0; e < 2; ++e) {
          const float pe = exp2(sf[t].thread_elements()[e] - mu);
          sf[t].thread_elements()[e] = pe;
          l += pe;
        }
        for (int j = 0; j < NF; ++j) {
          if (masked_pv) {
            const int lo = valid ? wx.lo - kt : 1, hi = valid ? wx.hi - kt : 0;
            mma_masked(of[j], sf[t], vs, DP, 8 * t, 8 * j, lo, hi, p);
          } else {
            simdgroup_float8x8 vf;
            frag_load(vf, vs, DP, 8 * t, 8 * j, p);
            simdgroup_multiply_accumulate(of[j], sf[t], vf, of[j]);
          }
        }
      }
    }
  }
  l = row_sum(l);
  if (!valid) return;
  const float inv = 1.0f / l;
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      if (c < g.Dv) out[(qtok * g.H + h) * g.Dv + c] = T(of[j].thread_elements()[e] * inv);
    }
  }
  if (p.col == 0) lse[qtok * g.H + h] = (m + log2(l)) * kLn2;
}

// ---------------------------------------------------------------------------------------------
// 2-D neighborhood attention backward: dQ (and delta) over each query tile's key box, then dK/dV
// over each key tile's query box (the queries whose windows hold its keys: an interval per axis,
// na_query_span), every query head of the key head in turn. geom as na2d_forward plus
// [16] has_dlse. Products that consume staged rows run masked (mma_masked) only in blocks holding
// a non-finite value, as in the forward.
// ---------------------------------------------------------------------------------------------
// The queries (group coordinates) whose window holds key j: [lo, hi] (empty when hi < lo). Both
// ends of a window never decrease with the query, so they form one interval; found by bisection.
inline AxisWindowT<int> na_query_span(int j, int len, int K, int S, bool C) {
  int lo = 0, hi = len;                     // first query whose window ends at or after j
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (na_axis_window(mid, len, K, S, C).hi >= j) hi = mid; else lo = mid + 1;
  }
  AxisWindowT<int> r;
  r.lo = lo;
  lo = -1; hi = len - 1;                    // last query whose window starts at or before j
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (na_axis_window(mid, len, K, S, C).lo <= j) lo = mid; else hi = mid - 1;
  }
  r.hi = lo;
  return r;
}

// Stage rows (row, c0 .. c0 + BK - 1) of two [B, L0, L1, heads, width] tensors of one dilation
// group and head (columns past `chi` zero); returns whether this thread staged a non-finite value.
template <typename S, int DP, int BK, typename T>
inline bool stage_box_row(threadgroup S* a, threadgroup S* b, device const T* x, device const T* y, int wx, int wy,
                          int tokrow, int dil1, int g1, int heads, int head, int c0, int chi, uint tid) {
  bool nonfinite = false;
  for (int e = int(tid); e < BK * DP; e += kThreads) {
    const int r = e / DP, c = e - r * DP, col = c0 + r;
    S xa = S(0), yb = S(0);
    if (col <= chi) {
      const int tok = (tokrow + col * dil1 + g1) * heads + head;
      if (c < wx) xa = S(x[tok * wx + c]);
      if (c < wy) yb = S(y[tok * wy + c]);
      nonfinite = nonfinite || !isfinite(float(xa)) || !isfinite(float(yb));
    }
    a[e] = xa;
    b[e] = yb;
  }
  return nonfinite;
}

template <typename T, int DP>
kernel void na2d_backward_dq(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                             device const T* v [[buffer(2)]], device const T* out [[buffer(3)]],
                             device const T* dout [[buffer(4)]], device const float* lse [[buffer(5)]],
                             device const float* dlse [[buffer(6)]], device T* dq [[buffer(7)]],
                             device float* delta [[buffer(8)]], constant int* geom [[buffer(9)]],
                             constant float& scale [[buffer(10)]], uint3 tg [[threadgroup_position_in_grid]],
                             uint tid [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                             ushort lane [[thread_index_in_simdgroup]]) {
  typedef typename Staged<T>::type S;
  constexpr int NF = DP / 8, BK = block_rows<S, DP>(), NT = BK / 8;
  threadgroup S ks[BK * DP];
  threadgroup S vs[BK * DP];
  threadgroup int bad[kSimdgroups];
  const NaGeom g = load_na_geom(geom);
  const bool has_dlse = geom[16] != 0;
  const int ngroups = g.DIL[0] * g.DIL[1];
  const int b = int(tg.z) / ngroups, grp = int(tg.z) % ngroups, g0 = grp / g.DIL[1], g1 = grp % g.DIL[1];
  const int h = int(tg.y), hk = h / (g.H / g.Hkv);
  const int len0 = na_group_len(g.L[0], g.DIL[0], g0), len1 = na_group_len(g.L[1], g.DIL[1], g1);
  const int y0 = (int(tg.x) / g.tiles1) * kSimdgroups, x0 = (int(tg.x) % g.tiles1) * kRows;
  if (y0 >= len0 || x0 >= len1) return;
  const FragPos p = frag_pos(lane);
  const int y = y0 + int(sg), x = x0 + p.row;
  const bool row_in = y < len0, valid = row_in && x < len1;
  const AxisWindowT<int> wy = na_axis_window(min(y, len0 - 1), len0, g.K[0], g.S[0], g.C[0]);
  const AxisWindowT<int> wx = na_axis_window(min(x, len1 - 1), len1, g.K[1], g.S[1], g.C[1]);
  const int ylo = na_axis_window(y0, len0, g.K[0], g.S[0], g.C[0]).lo;
  const int yhi = na_axis_window(min(y0 + kSimdgroups - 1, len0 - 1), len0, g.K[0], g.S[0], g.C[0]).hi;
  const int xlo = na_axis_window(x0, len1, g.K[1], g.S[1], g.C[1]).lo;
  const int xhi = na_axis_window(min(x0 + kRows - 1, len1 - 1), len1, g.K[1], g.S[1], g.C[1]).hi;
  const int qtok = (b * g.L[0] + min(y, len0 - 1) * g.DIL[0] + g0) * g.L[1] + min(x, len1 - 1) * g.DIL[1] + g1;
  const int row = qtok * g.H + h;

  simdgroup_float8x8 qf[NF], df[NF], dqf[NF];
  float dl = 0.0f;
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      qf[j].thread_elements()[e] = (valid && c < g.D) ? float(q[row * g.D + c]) * (scale * kLog2e) : 0.0f;
      const float d = (valid && c < g.Dv) ? float(dout[row * g.Dv + c]) : 0.0f;
      df[j].thread_elements()[e] = d;
      if (valid && c < g.Dv) dl += d * float(out[row * g.Dv + c]);
    }
    dqf[j] = frag_zero();
  }
  dl = row_sum(dl);
  if (has_dlse && valid) dl -= dlse[row];
  if (p.col == 0 && valid) delta[row] = dl;
  const float lse2 = valid ? lse[row] * kLog2e : 0.0f;

  for (int ky = ylo; ky <= yhi; ++ky) {
    const bool row_seen = row_in && ky >= wy.lo && ky <= wy.hi;
    const int krow = (b * g.L[0] + ky * g.DIL[0] + g0) * g.L[1];
    for (int c0 = xlo; c0 <= xhi; c0 += BK) {
      threadgroup_barrier(mem_flags::mem_threadgroup);
      const bool nf = stage_box_row<S, DP, BK>(ks, vs, k, v, g.D, g.Dv, krow, g.DIL[1], g1, g.Hkv, hk, c0, xhi, tid);
      const int any_bad = simd_max(nf ? 1 : 0);
      if (lane == 0) bad[sg] = any_bad;
      threadgroup_barrier(mem_flags::mem_threadgroup);
      if (!row_seen) continue;
      const bool masked = (bad[0] | bad[1] | bad[2] | bad[3]) != 0;
      for (int t = 0; t < NT; ++t) {
        const int kt = c0 + 8 * t;
        if (kt > xhi) continue;
        simdgroup_float8x8 sf = frag_zero(), dpf = frag_zero();
        for (int j = 0; j < NF; ++j) {
          simdgroup_float8x8 kf, vf;
          frag_load_t(kf, ks, DP, 8 * t, 8 * j, p);
          simdgroup_multiply_accumulate(sf, qf[j], kf, sf);
          frag_load_t(vf, vs, DP, 8 * t, 8 * j, p);
          simdgroup_multiply_accumulate(dpf, df[j], vf, dpf);
        }
        for (int e = 0; e < 2; ++e) {
          const int kx = kt + p.col + e;
          const bool seen = valid && kx >= wx.lo && kx <= wx.hi;
          const float pe = exp2(sf.thread_elements()[e] - lse2);
          sf.thread_elements()[e] = seen ? pe * (dpf.thread_elements()[e] - dl) : 0.0f;   // dS
        }
        for (int j = 0; j < NF; ++j) {
          if (masked) {
            mma_masked(dqf[j], sf, ks, DP, 8 * t, 8 * j, valid ? wx.lo - kt : 1, valid ? wx.hi - kt : 0, p);
          } else {
            simdgroup_float8x8 kf;
            frag_load(kf, ks, DP, 8 * t, 8 * j, p);
            simdgroup_multiply_accumulate(dqf[j], sf, kf, dqf[j]);
          }
        }
      }
    }
  }
  if (!valid) return;
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      if (c < g.D) dq[row * g.D + c] = T(dqf[j].thread_elements()[e] * scale);
    }
  }
}

template <typename T, int DP>
kernel void na2d_backward_dkdv(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                               device const T* v [[buffer(2)]], device const T* dout [[buffer(3)]],
                               device const float* lse [[buffer(4)]], device const float* delta [[buffer(5)]],
                               device T* dk [[buffer(6)]], device T* dv [[buffer(7)]],
                               constant int* geom [[buffer(8)]], constant float& scale [[buffer(9)]],
                               uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                               ushort sg [[simdgroup_index_in_threadgroup]],
                               ushort lane [[thread_index_in_simdgroup]]) {
  typedef typename Staged<T>::type S;
  constexpr int NF = DP / 8, BK = block_rows<S, DP>(), NT = BK / 8;
  threadgroup S qs[BK * DP];
  threadgroup S ds[BK * DP];
  threadgroup float lses[BK];
  threadgroup float dls[BK];
  threadgroup int bad[kSimdgroups];
  const NaGeom g = load_na_geom(geom);
  const int ngroups = g.DIL[0] * g.DIL[1], G = g.H / g.Hkv;
  const int b = int(tg.z) / ngroups, grp = int(tg.z) % ngroups, g0 = grp / g.DIL[1], g1 = grp % g.DIL[1];
  const int hk = int(tg.y);
  const int len0 = na_group_len(g.L[0], g.DIL[0], g0), len1 = na_group_len(g.L[1], g.DIL[1], g1);
  const int y0 = (int(tg.x) / g.tiles1) * kSimdgroups, x0 = (int(tg.x) % g.tiles1) * kRows;
  if (y0 >= len0 || x0 >= len1) return;
  const FragPos p = frag_pos(lane);
  const int y = y0 + int(sg), x = x0 + p.row;             // this lane's key
  const bool row_in = y < len0, valid = row_in && x < len1;
  const AxisWindowT<int> qy = na_query_span(min(y, len0 - 1), len0, g.K[0], g.S[0], g.C[0]);
  const AxisWindowT<int> qx = na_query_span(min(x, len1 - 1), len1, g.K[1], g.S[1], g.C[1]);
  const int ylo = na_query_span(y0, len0, g.K[0], g.S[0], g.C[0]).lo;
  const int yhi = na_query_span(min(y0 + kSimdgroups - 1, len0 - 1), len0, g.K[0], g.S[0], g.C[0]).hi;
  const int xlo = na_query_span(x0, len1, g.K[1], g.S[1], g.C[1]).lo;
  const int xhi = na_query_span(min(x0 + kRows - 1, len1 - 1), len1, g.K[1], g.S[1], g.C[1]).hi;
  const int ktok = (b * g.L[0] + min(y, len0 - 1) * g.DIL[0] + g0) * g.L[1] + min(x, len1 - 1) * g.DIL[1] + g1;
  const int krow = ktok * g.Hkv + hk;

  simdgroup_float8x8 kf[NF], vf[NF], dkf[NF], dvf[NF];
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      kf[j].thread_elements()[e] = (valid && c < g.D) ? float(k[krow * g.D + c]) * (scale * kLog2e) : 0.0f;
      vf[j].thread_elements()[e] = (valid && c < g.Dv) ? float(v[krow * g.Dv + c]) : 0.0f;
    }
    dkf[j] = frag_zero();
    dvf[j] = frag_zero();
  }

  for (int gi = 0; gi < G; ++gi) {
    const int h = hk * G + gi;
    for (int iy = ylo; iy <= yhi; ++iy) {
      const bool row_seen = row_in && iy >= qy.lo && iy <= qy.hi;
      const int qrow = (b * g.L[0] + iy * g.DIL[0] + g0) * g.L[1];
      for (int c0 = xlo; c0 <= xhi; c0 += BK) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
        const bool nf = stage_box_row<S, DP, BK>(qs, ds, q, dout, g.D, g.Dv, qrow, g.DIL[1], g1, g.H, h, c0, xhi,
                                                 tid);
        if (int(tid) < BK) {
          const int col = c0 + int(tid);
          const int at = (qrow + min(col, len1 - 1) * g.DIL[1] + g1) * g.H + h;
          lses[tid] = col <= xhi ? lse[at] * kLog2e : 0.0f;
          dls[tid] = col <= xhi ? delta[at] : 0.0f;
        }
        const int any_bad = simd_max(nf ? 1 : 0);
        if (lane == 0) bad[sg] = any_bad;
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (!row_seen) continue;
        const bool masked = (bad[0] | bad[1] | bad[2] | bad[3]) != 0;
        for (int t = 0; t < NT; ++t) {
          const int it = c0 + 8 * t;                     // first query column of the sub-block
          if (it > xhi) continue;
          simdgroup_float8x8 sf = frag_zero(), dpf = frag_zero();   // S^T, dP^T: rows keys, columns queries
          for (int j = 0; j < NF; ++j) {
            simdgroup_float8x8 qf, df;
            frag_load_t(qf, qs, DP, 8 * t, 8 * j, p);
            simdgroup_multiply_accumulate(sf, kf[j], qf, sf);
            frag_load_t(df, ds, DP, 8 * t, 8 * j, p);
            simdgroup_multiply_accumulate(dpf, vf[j], df, dpf);
          }
          simdgroup_float8x8 pf;
          for (int e = 0; e < 2; ++e) {
            const int c = 8 * t + p.col + e, ix = c0 + c;
            const bool seen = valid && ix >= qx.lo && ix <= qx.hi;
            const float pe = seen ? exp2(sf.thread_elements()[e] - lses[c]) : 0.0f;
            pf.thread_elements()[e] = pe;
            sf.thread_elements()[e] = seen ? pe * (dpf.thread_elements()[e] - dls[c]) : 0.0f;   // dS^T
          }
          const int lo = valid ? qx.lo - it : 1, hi = valid ? qx.hi - it : 0;
          for (int j = 0; j < NF; ++j) {
            if (masked) {
              mma_masked(dvf[j], pf, ds, DP, 8 * t, 8 * j, lo, hi, p);
              mma_masked(dkf[j], sf, qs, DP, 8 * t, 8 * j, lo, hi, p);
            } else {
              simdgroup_float8x8 df, qf;
              frag_load(df, ds, DP, 8 * t, 8 * j, p);
              simdgroup_multiply_accumulate(dvf[j], pf, df, dvf[j]);
              frag_load(qf, qs, DP, 8 * t, 8 * j, p);
              simdgroup_multiply_accumulate(dkf[j], sf, qf, dkf[j]);
            }
          }
        }
      }
    }
  }
  if (!valid) return;
  for (int j = 0; j < NF; ++j) {
    for (int e = 0; e < 2; ++e) {
      const int c = 8 * j + p.col + e;
      if (c < g.D) dk[krow * g.D + c] = T(dkf[j].thread_elements()[e] * scale);
      if (c < g.Dv) dv[krow * g.Dv + c] = T(dvf[j].thread_elements()[e]);
    }
  }
}

#define INSTANTIATE_FLASH(NAME, T, DP)                                                                  \
  template [[host_name("flash_forward_" #NAME "_" #DP)]] kernel void flash_forward<T, DP>(               \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device T* out [[buffer(3)]], device float* lse [[buffer(4)]], constant int* geom [[buffer(5)]],    \
      constant float& scale [[buffer(6)]], uint3 tg [[threadgroup_position_in_grid]],                    \
      uint tid [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],            \
      ushort lane [[thread_index_in_simdgroup]]);                                                        \
  template [[host_name("flash_backward_dq_" #NAME "_" #DP)]] kernel void flash_backward_dq<T, DP>(       \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* out [[buffer(3)]], device const T* dout [[buffer(4)]],                             \
      device const float* lse [[buffer(5)]], device const float* dlse [[buffer(6)]], device T* dq [[buffer(7)]], \
      device float* delta [[buffer(8)]], constant int* geom [[buffer(9)]], constant float& scale [[buffer(10)]], \
      uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],               \
      ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]]);          \
  template [[host_name("flash_backward_dkdv_" #NAME "_" #DP)]] kernel void flash_backward_dkdv<T, DP>(   \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* dout [[buffer(3)]], device const float* lse [[buffer(4)]],                         \
      device const float* delta [[buffer(5)]], device T* dk [[buffer(6)]], device T* dv [[buffer(7)]],   \
      constant int* geom [[buffer(8)]], constant float& scale [[buffer(9)]],                             \
      uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],               \
      ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]]);          \
  template [[host_name("na2d_forward_" #NAME "_" #DP)]] kernel void na2d_forward<T, DP>(                 \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device T* out [[buffer(3)]], device float* lse [[buffer(4)]], constant int* geom [[buffer(5)]],    \
      constant float& scale [[buffer(6)]], uint3 tg [[threadgroup_position_in_grid]],                    \
      uint tid [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],            \
      ushort lane [[thread_index_in_simdgroup]]);                                                        \
  template [[host_name("na2d_backward_dq_" #NAME "_" #DP)]] kernel void na2d_backward_dq<T, DP>(         \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* out [[buffer(3)]], device const T* dout [[buffer(4)]],                             \
      device const float* lse [[buffer(5)]], device const float* dlse [[buffer(6)]], device T* dq [[buffer(7)]], \
      device float* delta [[buffer(8)]], constant int* geom [[buffer(9)]], constant float& scale [[buffer(10)]], \
      uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],               \
      ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]]);          \
  template [[host_name("na2d_backward_dkdv_" #NAME "_" #DP)]] kernel void na2d_backward_dkdv<T, DP>(     \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]], device const T* v [[buffer(2)]], \
      device const T* dout [[buffer(3)]], device const float* lse [[buffer(4)]],                         \
      device const float* delta [[buffer(5)]], device T* dk [[buffer(6)]], device T* dv [[buffer(7)]],   \
      constant int* geom [[buffer(8)]], constant float& scale [[buffer(9)]],                             \
      uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],               \
      ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]]);

// Padded head dims DP the host picks from (the smallest that holds max(D, Dv)).
#define INSTANTIATE_FLASH_DIMS(NAME, T)                                                                 \
  INSTANTIATE_FLASH(NAME, T, 8) INSTANTIATE_FLASH(NAME, T, 16) INSTANTIATE_FLASH(NAME, T, 32)         \
  INSTANTIATE_FLASH(NAME, T, 64) INSTANTIATE_FLASH(NAME, T, 128) INSTANTIATE_FLASH(NAME, T, 256)

INSTANTIATE_FLASH_DIMS(float32, float)
INSTANTIATE_FLASH_DIMS(float16, half)
#if __METAL_VERSION__ >= 310
INSTANTIATE_FLASH_DIMS(bfloat16, bfloat)
#endif
