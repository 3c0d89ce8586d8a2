// SageAttention 1.x INT8 QK attention (sage_mps.sageattn(..., qk_quant="int8") on Metal).
//
// Layout (tokens, then heads, contiguous): q [B, Nq, H, D], k [B, Nk, Hkv, D], v [B, Nk, Hkv, Dv],
// out [B, Nq, H, Dv], lse [B, Nq, H] (float, natural log, without the smoothing correction).
// Quantized: qi/ki int8 with q's/k's shape; block scales qs [B, H, ceil(Nq / q_block)],
// ks [B, Hkv, ceil(Nk / k_block)].
//
//   sage_quantize_<T>     one threadgroup per (batch, head, token block): scale = max|x * mult| / 127
//                         (0 for a block of zeros); x * mult / scale rounded half away from zero.
//   sage_int8_forward_<T> a threadgroup owns 32 queries of one (batch, head): 8 SIMD-groups of 4
//                         queries, 8 lanes per query splitting D in 4-element slices. Chunks of 16
//                         keys (K's int8 values as half, V in T, key scales) are staged in
//                         threadgroup memory; the score of a key is the integer dot product
//                         computed with float FMAs on the integer values (partial sums meeting
//                         through simd_shuffle_xor), times the two block scales, in base 2 (q
//                         carries sm_scale * log2 e); online softmax and P V in float.
//
// Why float FMAs: Apple GPUs have no int8 dot product and run 32-bit integer multiplies at a
// quarter of the FP32 FMA rate. The float sum is exact: every product and partial sum is an
// integer of magnitude at most D * 127^2 <= 256 * 16129 < 2^24, which float holds exactly, so the
// scores equal the int32 path's bit for bit. K's values are staged as half (exact for |x| <= 2048),
// converted once when staged, not once a lane reads them.
//
// params (int32): [0] B [1] Nq [2] Nk [3] H [4] Hkv [5] D [6] Dv [7] causal [8] q_block [9] k_block
// Causal: query i sees keys j <= i (top-left when Nq != Nk). Head dims up to 256.
#include <metal_stdlib>
using namespace metal;

constant constexpr int kLanes = 8;          // lanes per query
constant constexpr int kQueriesPerSimd = 4; // 32 / kLanes
constant constexpr int kSimdGroups = 8;
constant constexpr int kQueries = kQueriesPerSimd * kSimdGroups;
constant constexpr int kChunk = 16;         // keys per staged chunk
constant constexpr int kMaxD4 = 64;         // head dim / 4
constant constexpr int kSlots = kMaxD4 / kLanes;   // 4-element slots per lane
constant constexpr float kLn2 = 0.6931471805599453f;

// ------------------------------------------------------------------------------------------------
// Block quantization. p: [0] B [1] N [2] H [3] D [4] block
// ------------------------------------------------------------------------------------------------
template <typename T>
kernel void sage_quantize(device const T* x [[buffer(0)]], device char* xq [[buffer(1)]],
                          device float* scales [[buffer(2)]], constant int* p [[buffer(3)]],
                          constant float& mult [[buffer(4)]],
                          uint tg [[threadgroup_position_in_grid]],
                          uint tid [[thread_index_in_threadgroup]],
                          uint nthreads [[threads_per_threadgroup]]) {
  threadgroup float partial[32];
  const int N = p[1], H = p[2], D = p[3], block = p[4];
  const int nb = (N + block - 1) / block;
  const int blk = int(tg) % nb, h = (int(tg) / nb) % H, b = int(tg) / (nb * H);
  const int n0 = blk * block, count = (min(n0 + block, N) - n0) * D;
  float amax = 0.0f;
  for (int e = int(tid); e < count; e += int(nthreads)) {
    const int n = n0 + e / D, d = e % D;
    amax = max(amax, fabs(float(x[((b * N + n) * H + h) * D + d]) * mult));
  }
  amax = simd_max(amax);
  if (tid % 32 == 0) partial[tid / 32] = amax;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (tid < 32) {
    float m = int(tid) < int(nthreads + 31) / 32 ? partial[tid] : 0.0f;
    m = simd_max(m);
    if (tid == 0) partial[0] = m;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  const float scale = partial[0] / 127.0f;
  if (tid == 0) scales[tg] = scale;
  for (int e = int(tid); e < count; e += int(nthreads)) {
    const int n = n0 + e / D, d = e % D;
    const int at = ((b * N + n) * H + h) * D + d;
    float r = 0.0f;
    if (scale > 0.0f) {
      const float y = (float(x[at]) * mult) / scale;
      r = clamp(floor(fabs(y) + 0.5f), 0.0f, 127.0f);
      r = y < 0.0f ? -r : r;
    }
    xq[at] = char(int(r));
  }
}

// ------------------------------------------------------------------------------------------------
// Attention with integer QK^T
// ------------------------------------------------------------------------------------------------
template <typename T>
kernel void sage_int8_forward(device const char* qi [[buffer(0)]], device const float* qs [[buffer(1)]],
                              device const char* ki [[buffer(2)]], device const float* ks [[buffer(3)]],
                              device const T* v [[buffer(4)]], device T* out [[buffer(5)]],
                              device float* lse [[buffer(6)]], constant int* p [[buffer(7)]],
                              uint tg [[threadgroup_position_in_grid]],
                              uint tid [[thread_index_in_threadgroup]],
                              uint nthreads [[threads_per_threadgroup]]) {
  threadgroup half4 kst[kChunk * kMaxD4];
  threadgroup vec<T, 4> vst[kChunk * kMaxD4];
  threadgroup float kscale[kChunk];
  const int Nq = p[1], Nk = p[2], H = p[3], Hkv = p[4], D = p[5], Dv = p[6];
  const bool causal = p[7] != 0;
  const int qblock = p[8], kblock = p[9];
  const int D4 = (D + 3) / 4, Dv4 = (Dv + 3) / 4;
  const int qtiles = (Nq + kQueries - 1) / kQueries;
  const int qt = int(tg) % qtiles, h = (int(tg) / qtiles) % H, b = int(tg) / (qtiles * H);
  const int hk = h / (H / Hkv);
  const int lane = int(tid) % 32, slice = lane % kLanes;
  const int n = qt * kQueries + (int(tid) / 32) * kQueriesPerSimd + lane / kLanes;
  const bool valid = n < Nq;
  const int row = (b * Nq + n) * H + h;

  float4 qv[kSlots];
  float4 acc[kSlots];
  for (int i = 0; i < kSlots; ++i) {
    const int c = slice + kLanes * i;
    float4 x = float4(0.0f);
    if (valid && c < D4) {
      for (int j = 0; j < 4; ++j) {
        if (4 * c + j < D) x[j] = float(qi[row * D + 4 * c + j]);
      }
    }
    qv[i] = x;
    acc[i] = float4(0.0f);
  }
  const int nqb = (Nq + qblock - 1) / qblock, nkb = (Nk + kblock - 1) / kblock;
  const float qscale = valid ? qs[(b * H + h) * nqb + n / qblock] : 0.0f;
  // keys this threadgroup can need: all, or up to its last query when causal
  const int last_query = min(qt * kQueries + kQueries - 1, Nq - 1);
  const int key_end = causal ? min(Nk, last_query + 1) : Nk;
  float m = -INFINITY, l = 0.0f;

  for (int j0 = 0; j0 < key_end; j0 += kChunk) {
    const int cnt = min(kChunk, key_end - j0);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int e = int(tid); e < cnt * kMaxD4; e += int(nthreads)) {
      const int r = e / kMaxD4, c = e % kMaxD4;
      const int src = (b * Nk + j0 + r) * Hkv + hk;
      half4 kx = half4(0.0f);
      vec<T, 4> vx = vec<T, 4>(T(0.0f));
      for (int j = 0; j < 4; ++j) {
        if (4 * c + j < D) kx[j] = half(ki[src * D + 4 * c + j]);
        if (4 * c + j < Dv) vx[j] = v[src * Dv + 4 * c + j];
      }
      kst[e] = kx;
      vst[e] = vx;
    }
    for (int r = int(tid); r < cnt; r += int(nthreads)) {
      kscale[r] = ks[(b * Hkv + hk) * nkb + (j0 + r) / kblock];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int r = 0; r < cnt; ++r) {
      float part = 0.0f;       // an integer below 2^24 at every step: exact
      for (int i = 0; i < kSlots; ++i) {
        const int c = slice + kLanes * i;
        if (c < D4) {
          const half4 kh = kst[r * kMaxD4 + c];
          const float4 kx = float4(kh);
          part = fma(qv[i].x, kx.x, part);
          part = fma(qv[i].y, kx.y, part);
          part = fma(qv[i].z, kx.z, part);
          part = fma(qv[i].w, kx.w, part);
        }
      }
      for (int mask = 1; mask < kLanes; mask <<= 1) part += simd_shuffle_xor(part, ushort(mask));
      const int key = j0 + r;
      if (!valid || (causal && key > n)) continue;
      const float s = part * qscale * kscale[r];
      if (s > m) {
        const float corr = exp2(m - s);
        l *= corr;
        for (int i = 0; i < kSlots; ++i) acc[i] *= corr;
        m = s;
      }
      const float pr = exp2(s - m);
      l += pr;
      for (int i = 0; i < kSlots; ++i) {
        const int c = slice + kLanes * i;
        if (c < Dv4) {
          const vec<T, 4> vx = vst[r * kMaxD4 + c];
          acc[i] += pr * float4(vx);
        }
      }
    }
  }
  if (!valid) return;
  const float inv = 1.0f / l;
  for (int i = 0; i < kSlots; ++i) {
    const int c = slice + kLanes * i;
    for (int j = 0; j < 4; ++j) {
      if (c < Dv4 && 4 * c + j < Dv) out[row * Dv + 4 * c + j] = T(acc[i][j] * inv);
    }
  }
  if (slice == 0) lse[row] = (m + log2(l)) * kLn2;
}

#define INSTANTIATE_SAGE_INT8(NAME, T)                                                              \
  template [[host_name("sage_quantize_" #NAME)]] kernel void sage_quantize<T>(                     \
      device const T* x [[buffer(0)]], device char* xq [[buffer(1)]], device float* scales [[buffer(2)]], \
      constant int* p [[buffer(3)]], constant float& mult [[buffer(4)]],                            \
      uint tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],           \
      uint nthreads [[threads_per_threadgroup]]);                                                   \
  template [[host_name("sage_int8_forward_" #NAME)]] kernel void sage_int8_forward<T>(             \
      device const char* qi [[buffer(0)]], device const float* qs [[buffer(1)]],                    \
      device const char* ki [[buffer(2)]], device const float* ks [[buffer(3)]],                    \
      device const T* v [[buffer(4)]], device T* out [[buffer(5)]], device float* lse [[buffer(6)]], \
      constant int* p [[buffer(7)]], uint tg [[threadgroup_position_in_grid]],                      \
      uint tid [[thread_index_in_threadgroup]], uint nthreads [[threads_per_threadgroup]]);

INSTANTIATE_SAGE_INT8(float32, float)
INSTANTIATE_SAGE_INT8(float16, half)
#if __METAL_VERSION__ >= 310
INSTANTIATE_SAGE_INT8(bfloat16, bfloat)
#endif
