// Split neighborhood-attention kernels: explicit attention weights, for the historical qk/av APIs
// (natten_mps/split.py) and their gradients. One thread per output element (or 4-channel chunk):
// these serve models that need the weights themselves (attention dropout, positional biases, DiNAT
// ports); the fused kernels of attention.metal are the fast path.
//
// Layout (heads-last, contiguous; 1-D and 2-D problems padded to 3-D with unit leading axes):
//   a, x, out rows [B, L0, L1, L2, heads, width]     weights w [B, L0, L1, L2, H, Kvol]
// Geometry: the `geom` buffer of attn_tile.h (only B, H, Hkv, D, Dv, L, K, S, DIL, C are read).
// Neighbour n of a query (row-major over the axes, n = (n0 K1 + n1) K2 + n2) is, per axis in the
// query's dilation group, the key at `first_neighbour + n_ax`: the window start of NATTEN's rule,
// or on causal axes `leader - (K - 1)`, the order of natten-mps and older NATTEN (entries before
// the group start or after the query are masked).
//
// Kernels (suffix _<dtype>):
//   split_qk      w[t, h, n] = a[t, h] . x[nbr(t, n), h / G]      (masked: `fill`)
//   split_av      out[t, h] = sum_n w[t, h, n] x[nbr(t, n), h / G] (masked entries skipped)
//   split_inverse out[j, hk] = sum over (t, g, n) with nbr(t, n) = j of w[t, hk G + g, n] x[t, hk G + g]
#include <metal_stdlib>
using namespace metal;

#include "attn_tile.h"

// Dilation group, group coordinate and group length, per axis, of flat token `tok`.
struct TokenPlace {
  int grp[3], c[3], glen[3];
};

inline TokenPlace place_token(thread const Geom& G, int tok) {
  TokenPlace P;
  int x[3];
  x[2] = tok % G.Lq[2];
  x[1] = (tok / G.Lq[2]) % G.Lq[1];
  x[0] = tok / (G.Lq[2] * G.Lq[1]);
  for (int ax = 0; ax < 3; ++ax) {
    P.grp[ax] = x[ax] % G.DIL[ax];
    P.c[ax] = x[ax] / G.DIL[ax];
    P.glen[ax] = group_len(G.Lq[ax], G.DIL[ax], P.grp[ax]);
  }
  return P;
}

// Group coordinate of neighbour 0 of query `c` on axis `ax`.
inline int first_neighbour(thread const Geom& G, int ax, int c, int glen) {
  if (G.C[ax]) {
    return min((c / G.S[ax]) * G.S[ax] + G.S[ax] - 1, glen - 1) - G.K[ax] + 1;
  }
  return key_span(G, ax, c, glen).lo;
}

// Flat key token of neighbour n of the query at `P`, or -1 where the entry is masked.
inline int neighbour_token(thread const Geom& G, thread const TokenPlace& P, int n) {
  int idx[3], kc[3];
  idx[2] = n % G.K[2];
  idx[1] = (n / G.K[2]) % G.K[1];
  idx[0] = n / (G.K[2] * G.K[1]);
  for (int ax = 0; ax < 3; ++ax) {
    kc[ax] = first_neighbour(G, ax, P.c[ax], P.glen[ax]) + idx[ax];
    if (kc[ax] < 0 || (G.C[ax] && kc[ax] > P.c[ax])) return -1;
  }
  return token_of(kc, P.grp, G.DIL, G.Lq);
}

inline int kernel_volume(thread const Geom& G) { return G.K[0] * G.K[1] * G.K[2]; }

inline int tokens(thread const Geom& G) { return G.Lq[0] * G.Lq[1] * G.Lq[2]; }

// ------------------------------------------------------------------------------------------------
// Scores: one thread per (batch, token, head, neighbour); width G.D.
// ------------------------------------------------------------------------------------------------
template <typename T>
kernel void split_qk(device const T* a [[buffer(0)]], device const T* x [[buffer(1)]],
                     device T* w [[buffer(2)]], constant int* geom [[buffer(3)]],
                     constant float& fill [[buffer(4)]], uint gid [[thread_position_in_grid]]) {
  const Geom G = load_geom<false>(geom);
  const int kvol = kernel_volume(G), L = tokens(G);
  if (int(gid) >= G.B * L * G.H * kvol) return;
  const int n = int(gid) % kvol;
  const int h = (int(gid) / kvol) % G.H;
  const int t = (int(gid) / (kvol * G.H)) % L;
  const int b = int(gid) / (kvol * G.H * L);
  const TokenPlace P = place_token(G, t);
  const int key = neighbour_token(G, P, n);
  if (key < 0) {
    w[gid] = T(fill);
    return;
  }
  device const T* ar = a + ((b * L + t) * G.H + h) * G.D;
  device const T* xr = x + ((b * L + key) * G.Hkv + h / (G.H / G.Hkv)) * G.D;
  float acc = 0.0f;
  for (int d = 0; d < G.D; ++d) {
    acc += float(ar[d]) * float(xr[d]);
  }
  w[gid] = T(acc);
}

// ------------------------------------------------------------------------------------------------
// Weighted rows: one thread per (batch, token, head, 4-channel chunk); width G.Dv.
// ------------------------------------------------------------------------------------------------
template <typename T>
kernel void split_av(device const T* w [[buffer(0)]], device const T* x [[buffer(1)]],
                     device T* out [[buffer(2)]], constant int* geom [[buffer(3)]],
                     uint gid [[thread_position_in_grid]]) {
  const Geom G = load_geom<false>(geom);
  const int kvol = kernel_volume(G), L = tokens(G), chunks = (G.Dv + 3) / 4;
  if (int(gid) >= G.B * L * G.H * chunks) return;
  const int ch = int(gid) % chunks;
  const int h = (int(gid) / chunks) % G.H;
  const int t = (int(gid) / (chunks * G.H)) % L;
  const int b = int(gid) / (chunks * G.H * L);
  const TokenPlace P = place_token(G, t);
  const int hk = h / (G.H / G.Hkv);
  device const T* wr = w + ((b * L + t) * G.H + h) * kvol;
  float4 acc = float4(0.0f);
  for (int n = 0; n < kvol; ++n) {
    const int key = neighbour_token(G, P, n);
    if (key < 0) continue;
    const float p = float(wr[n]);
    device const T* xr = x + ((b * L + key) * G.Hkv + hk) * G.Dv;
    for (int j = 0; j < 4; ++j) {
      const int d = 4 * ch + j;
      if (d < G.Dv) acc[j] += p * float(xr[d]);
    }
  }
  device T* o = out + ((b * L + t) * G.H + h) * G.Dv;
  for (int j = 0; j < 4; ++j) {
    const int d = 4 * ch + j;
    if (d < G.Dv) o[d] = T(acc[j]);
  }
}

// ------------------------------------------------------------------------------------------------
// Transposed weighted rows (gradients of the keys/values): one thread per (batch, key token, key
// head, 4-channel chunk) over the queries whose window holds the key (attn_tile.h query_bounds);
// width G.Dv. No atomics: each output is written by one thread.
// ------------------------------------------------------------------------------------------------
template <typename T>
kernel void split_inverse(device const T* w [[buffer(0)]], device const T* x [[buffer(1)]],
                          device T* out [[buffer(2)]], constant int* geom [[buffer(3)]],
                          uint gid [[thread_position_in_grid]]) {
  const Geom G = load_geom<false>(geom);
  const int kvol = kernel_volume(G), L = tokens(G), chunks = (G.Dv + 3) / 4;
  if (int(gid) >= G.B * L * G.Hkv * chunks) return;
  const int ch = int(gid) % chunks;
  const int hk = (int(gid) / chunks) % G.Hkv;
  const int j = (int(gid) / (chunks * G.Hkv)) % L;
  const int b = int(gid) / (chunks * G.Hkv * L);
  const int groups = G.H / G.Hkv;
  const TokenPlace P = place_token(G, j);
  Span box[3];
  for (int ax = 0; ax < 3; ++ax) box[ax] = query_bounds(G, ax, P.c[ax], P.glen[ax]);
  float4 acc = float4(0.0f);
  int qc[3];
  for (qc[0] = box[0].lo; qc[0] <= box[0].hi; ++qc[0]) {
    for (qc[1] = box[1].lo; qc[1] <= box[1].hi; ++qc[1]) {
      for (qc[2] = box[2].lo; qc[2] <= box[2].hi; ++qc[2]) {
        int n = 0;
        for (int ax = 0; ax < 3; ++ax) {
          n = n * G.K[ax] + (P.c[ax] - first_neighbour(G, ax, qc[ax], P.glen[ax]));
        }
        const int t = token_of(qc, P.grp, G.DIL, G.Lq);
        for (int g = 0; g < groups; ++g) {
          const int h = hk * groups + g;
          const float p = float(w[((b * L + t) * G.H + h) * kvol + n]);
          device const T* xr = x + ((b * L + t) * G.H + h) * G.Dv;
          for (int e = 0; e < 4; ++e) {
            const int d = 4 * ch + e;
            if (d < G.Dv) acc[e] += p * float(xr[d]);
          }
        }
      }
    }
  }
  device T* o = out + ((b * L + j) * G.Hkv + hk) * G.Dv;
  for (int e = 0; e < 4; ++e) {
    const int d = 4 * ch + e;
    if (d < G.Dv) o[d] = T(acc[e]);
  }
}

#define INSTANTIATE_SPLIT(NAME, T)                                                                 \
  template [[host_name("split_qk_" #NAME)]] kernel void split_qk<T>(                              \
      device const T* a [[buffer(0)]], device const T* x [[buffer(1)]], device T* w [[buffer(2)]],  \
      constant int* geom [[buffer(3)]], constant float& fill [[buffer(4)]],                        \
      uint gid [[thread_position_in_grid]]);                                                       \
  template [[host_name("split_av_" #NAME)]] kernel void split_av<T>(                              \
      device const T* w [[buffer(0)]], device const T* x [[buffer(1)]], device T* out [[buffer(2)]], \
      constant int* geom [[buffer(3)]], uint gid [[thread_position_in_grid]]);                     \
  template [[host_name("split_inverse_" #NAME)]] kernel void split_inverse<T>(                    \
      device const T* w [[buffer(0)]], device const T* x [[buffer(1)]], device T* out [[buffer(2)]], \
      constant int* geom [[buffer(3)]], uint gid [[thread_position_in_grid]]);

INSTANTIATE_SPLIT(float32, float)
INSTANTIATE_SPLIT(float16, half)
#if __METAL_VERSION__ >= 310
INSTANTIATE_SPLIT(bfloat16, bfloat)
#endif
