// Fused neighborhood-attention forward: output and log-sum-exp in one dispatch.
//
// Layout (heads-last, contiguous):
//   q   [B, L0, L1, L2, H,   D ]      k, v [B, L0, L1, L2, Hkv, D | Dv]
//   out [B, L0, L1, L2, H,   Dv]      lse  [B, L0, L1, L2, H] (float, natural log)
// 1-D and 2-D problems are passed as 3-D with unit axes (L = K = stride = dilation = 1).
// geom (int64): B, H, Hkv, D, Dv, L[3], K[3], stride[3], dilation[3], causal[3].
// Grid: one thread per (batch, token, head); each runs an online softmax over its window,
// accumulating in float. GQA: query head h reads key/value head h / (H / Hkv).
#include <metal_stdlib>
using namespace metal;

#include "na_window.h"

constant constexpr int kMaxHeadDim = 256;

template <typename T>
kernel void na_forward(device const T* q [[buffer(0)]],
                       device const T* k [[buffer(1)]],
                       device const T* v [[buffer(2)]],
                       device T* out [[buffer(3)]],
                       device float* lse [[buffer(4)]],
                       device const long* geom [[buffer(5)]],
                       constant float& scale [[buffer(6)]],
                       uint tid [[thread_position_in_grid]]) {
  const long B = geom[0], H = geom[1], Hkv = geom[2], D = geom[3], Dv = geom[4];
  long L[3], K[3], S[3], DIL[3];
  bool C[3];
  for (int a = 0; a < 3; ++a) {
    L[a] = geom[5 + a];
    K[a] = geom[8 + a];
    S[a] = geom[11 + a];
    DIL[a] = geom[14 + a];
    C[a] = geom[17 + a] != 0;
  }
  const long tokens = L[0] * L[1] * L[2];
  if ((long)tid >= B * tokens * H) {
    return;
  }
  const long h = (long)tid % H;
  const long token = ((long)tid / H) % tokens;
  const long b = (long)tid / (H * tokens);
  const long hk = h / (H / Hkv);
  long coord[3] = {token / (L[1] * L[2]), (token / L[2]) % L[1], token % L[2]};

  // Per-axis window, in each axis' dilation group.
  long lo[3], hi[3], grp[3];
  for (int a = 0; a < 3; ++a) {
    grp[a] = coord[a] % DIL[a];
    AxisWindow w = na_axis_window(coord[a] / DIL[a], na_group_length(L[a], DIL[a], grp[a]), K[a], S[a], C[a]);
    lo[a] = w.lo;
    hi[a] = w.hi;
  }

  float qv[kMaxHeadDim];
  const long q_base = ((b * tokens + token) * H + h) * D;
  for (long d = 0; d < D; ++d) {
    qv[d] = float(q[q_base + d]) * scale;
  }
  float acc[kMaxHeadDim];
  for (long d = 0; d < Dv; ++d) {
    acc[d] = 0.0f;
  }
  float m = -INFINITY;
  float l = 0.0f;
  for (long i0 = lo[0]; i0 <= hi[0]; ++i0) {
    for (long i1 = lo[1]; i1 <= hi[1]; ++i1) {
      for (long i2 = lo[2]; i2 <= hi[2]; ++i2) {
        const long key = ((i0 * DIL[0] + grp[0]) * L[1] + (i1 * DIL[1] + grp[1])) * L[2] + (i2 * DIL[2] + grp[2]);
        const long k_base = ((b * tokens + key) * Hkv + hk) * D;
        float s = 0.0f;
        for (long d = 0; d < D; ++d) {
          s += qv[d] * float(k[k_base + d]);
        }
        // NaN-propagating online softmax (metal::max would drop a NaN score).
        const float m_new = s > m ? s : m;
        const float correction = m == m_new ? 1.0f : exp(m - m_new);
        const float p = exp(s - m_new);
        l = l * correction + p;
        const long v_base = ((b * tokens + key) * Hkv + hk) * Dv;
        for (long d = 0; d < Dv; ++d) {
          acc[d] = acc[d] * correction + p * float(v[v_base + d]);
        }
        m = m_new;
      }
    }
  }
  const long o_base = ((b * tokens + token) * H + h) * Dv;
  const float inv = 1.0f / l;
  for (long d = 0; d < Dv; ++d) {
    out[o_base + d] = T(acc[d] * inv);
  }
  lse[(b * tokens + token) * H + h] = m + log(l);
}

#define INSTANTIATE_NA_FORWARD(NAME, T)                                                        \
  template [[host_name("na_forward_" #NAME)]] kernel void na_forward<T>(                        \
      device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],                        \
      device const T* v [[buffer(2)]], device T* out [[buffer(3)]],                            \
      device float* lse [[buffer(4)]], device const long* geom [[buffer(5)]],                  \
      constant float& scale [[buffer(6)]], uint tid [[thread_position_in_grid]]);

INSTANTIATE_NA_FORWARD(float32, float)
INSTANTIATE_NA_FORWARD(float16, half)
#if __METAL_VERSION__ >= 310
INSTANTIATE_NA_FORWARD(bfloat16, bfloat)
#endif
