// CUDA stand-in for <metal_stdlib>, used by the MSL -> CUDA back end (natten_mps/metal/cuda.py).
//
// The back end wraps a rewritten .metal source in `namespace metal { ... }` (so its names hide
// CUDA's own float4, exp, ...) and compiles it with nvcc against this header. A Metal SIMD-group is
// a warp of 32 lanes, a threadgroup is a block, threadgroup memory is shared memory. Partial edge
// threadgroups are launched as separate, smaller blocks, so `threads_per_threadgroup` is the
// partial size and every barrier is reached by every thread of the block, as on Metal.
//
// What this header provides:
//   1. the back-end hooks of metal_common.h (binary16 via cuda_fp16, fast:: as CUDA intrinsics)
//   2. thread-position attributes from the launch description
//   3. synchronisation: threadgroup_barrier -> __syncthreads, SIMD-group collectives -> warp
//      shuffles over the active lanes (__activemask)
//   4. simdgroup 8x8 matrices as per-lane fragments in Apple's layout (2 elements a lane),
//      multiplied with shuffles and 512 FP32 FMAs a product (no tensor cores: Apple GPUs have none)
#pragma once
#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 320
#endif
#include <cstdint>
#include <cstring>
#include <cmath>
#include <limits>
#include <type_traits>
#include <cuda_fp16.h>

#define MTL_FN __device__ inline
__device__ inline uint16_t mtl_f32_to_f16_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ inline float mtl_f16_bits_to_f32(uint16_t b) { return __half2float(__ushort_as_half(b)); }
#define MTL_FAST_EXP(x) __expf(x)
#define MTL_FAST_EXP2(x) exp2f(x)
#define MTL_FAST_LOG(x) __logf(x)
#define MTL_FAST_LOG2(x) __log2f(x)
#define MTL_FAST_RSQRT(x) rsqrtf(x)

#include "metal_common.h"

namespace mtl {

// ---------------------------------------------------------------------------------------------
// 2. Launch description and thread attributes
// ---------------------------------------------------------------------------------------------
// One CUDA launch covers a box of equally sized threadgroups; `offset` is the box's first
// threadgroup in the Metal grid.
struct Launch {
  uint32_t grid[3];     // threads in the Metal grid
  uint32_t group[3];    // the dispatch's threadgroup size
  uint32_t groups[3];   // threadgroups in the Metal grid
  uint32_t offset[3];   // first threadgroup of this launch
};

__device__ inline uint32_t linear_tid() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
__device__ inline uint32_t lane_id() { return linear_tid() & 31u; }

__device__ inline ThreadAttrs thread_attrs(const Launch& L) {
  uint32_t gid[3] = {blockIdx.x + L.offset[0], blockIdx.y + L.offset[1], blockIdx.z + L.offset[2]};
  uint32_t size[3] = {blockDim.x, blockDim.y, blockDim.z};
  return make_thread_attrs(gid, size, L.group, L.grid, L.groups, linear_tid());
}

// ---------------------------------------------------------------------------------------------
// 3. Warp exchange of any value of up to 64 bytes
// ---------------------------------------------------------------------------------------------
template <class T> __device__ inline T shfl(const T& v, int src, unsigned mask) {
  static_assert(sizeof(T) <= 64, "SIMD exchange of a value larger than 64 bytes");
  constexpr int W = (int)((sizeof(T) + 3) / 4);
  uint32_t w[W];
  w[W - 1] = 0;
  memcpy(w, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < W; ++i) w[i] = __shfl_sync(mask, w[i], src);
  T r;
  memcpy(&r, w, sizeof(T));
  return r;
}
// Lane `src` if it is active, else the caller's own lane (its own value comes back, as in the
// emulator).
__device__ inline int active_or_self(int src, unsigned mask) {
  return (src >= 0 && src < 32 && ((mask >> src) & 1u)) ? src : (int)lane_id();
}

}  // namespace mtl

namespace metal {

// ---- 3. synchronisation -------------------------------------------------------------------
__device__ inline void threadgroup_barrier(mem_flags) { __syncthreads(); }
__device__ inline void simdgroup_barrier(mem_flags) { __syncwarp(__activemask()); }

template <class T, class Op> __device__ inline T simd_reduce(T v, Op op) {
  unsigned mask = __activemask();
  if (mask == 0xffffffffu) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, mtl::shfl(v, (int)(mtl::lane_id() ^ o), mask));
    return v;
  }
  T acc = v;
  bool first = true;
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    T x = mtl::shfl(v, l, mask);
    acc = first ? x : op(acc, x);
    first = false;
  }
  return acc;
}
template <class T> __device__ inline T simd_sum(T v) {
  return simd_reduce(v, [](T a, T b) { return T(a + b); });
}
template <class T> __device__ inline T simd_max(T v) {
  return simd_reduce(v, [](T a, T b) { return T(max(a, b)); });
}
template <class T> __device__ inline T simd_min(T v) {
  return simd_reduce(v, [](T a, T b) { return T(min(a, b)); });
}
template <class T> __device__ inline T simd_shuffle(T v, ushort lane) {
  unsigned mask = __activemask();
  return mtl::shfl(v, mtl::active_or_self((int)lane, mask), mask);
}
template <class T> __device__ inline T simd_broadcast(T v, ushort lane) { return simd_shuffle(v, lane); }
template <class T> __device__ inline T simd_shuffle_xor(T v, ushort m) {
  unsigned mask = __activemask();
  int src = (int)((mtl::lane_id() ^ m) & 31u);
  if (mask == 0xffffffffu) return mtl::shfl(v, src, mask);   // the whole SIMD-group: one exchange
  return mtl::shfl(v, mtl::active_or_self(src, mask), mask);
}
template <class T> __device__ inline T simd_shuffle_down(T v, ushort delta) {
  unsigned mask = __activemask();
  return mtl::shfl(v, mtl::active_or_self((int)mtl::lane_id() + (int)delta, mask), mask);
}
template <class T> __device__ inline T simd_shuffle_up(T v, ushort delta) {
  unsigned mask = __activemask();
  return mtl::shfl(v, mtl::active_or_self((int)mtl::lane_id() - (int)delta, mask), mask);
}
template <class T> __device__ inline T simd_prefix_exclusive_sum(T v) {
  unsigned mask = __activemask();
  int lane = (int)mtl::lane_id();
  T acc = T(0);
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    T x = mtl::shfl(v, l, mask);
    if (l < lane) acc = T(acc + x);
  }
  return acc;
}

// ---- 4. simdgroup matrices ----------------------------------------------------------------
// Apple's per-lane layout (as the emulator): lane l holds row (l / 16) * 4 + (l / 2) % 4 and
// columns ((l / 8) % 2) * 4 + (l % 2) * 2 + {0, 1} (thread_elements()). A product costs what Apple
// executes: 16 FP32 FMAs a lane, 512 a SIMD-group, register operands, no tensor cores. The operand
// exchange is the part that is not fair: Apple's matrix unit reads other lanes' fragments for free,
// here each k pair costs a 2-word shuffle of A and two 2-word shuffles of B (24 shuffles a
// product, 1.5 per FMA).
__device__ inline int sg_frag_row(int lane) { return ((lane >> 4) << 2) + ((lane >> 1) & 3); }
__device__ inline int sg_frag_col(int lane) { return (((lane >> 3) & 1) << 2) + ((lane & 1) << 1); }
__device__ inline int sg_frag_lane(int row, int col) {
  return ((col >> 1) & 1) | ((row & 1) << 1) | (((row >> 1) & 1) << 2) | ((col >> 2) << 3) | ((row >> 2) << 4);
}
template <class T, int R, int C> struct simdgroup_matrix {
  static_assert(R == 8 && C == 8, "only 8x8 simdgroup matrices are supported");
  vec<T, 2> el;
  __device__ simdgroup_matrix() { el[0] = T(0); el[1] = T(0); }
  __device__ explicit simdgroup_matrix(T diag) {
    int l = (int)mtl::lane_id(), r = sg_frag_row(l), c = sg_frag_col(l);
    el[0] = r == c ? diag : T(0);
    el[1] = r == c + 1 ? diag : T(0);
  }
  __device__ vec<T, 2>& thread_elements() { return el; }
  __device__ const vec<T, 2>& thread_elements() const { return el; }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;
template <class T, int R, int C> __device__ simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T v) {
  simdgroup_matrix<T, R, C> s;
  s.el[0] = v;
  s.el[1] = v;
  return s;
}
// Memory offset of this lane's element j of a matrix at `origin`.
__device__ inline int64_t fragment_offset(int j, ulong elements_per_row, ulong2 origin, bool transpose) {
  int l = (int)mtl::lane_id(), r = sg_frag_row(l), c = sg_frag_col(l) + j;
  ulong row = transpose ? origin.y + c : origin.y + r, col = transpose ? origin.x + r : origin.x + c;
  return (int64_t)(row * elements_per_row + col);
}
template <class T, int R, int C, class P>
__device__ void simdgroup_load(simdgroup_matrix<T, R, C>& d, P src, ulong elements_per_row = C,
                               ulong2 origin = ulong2(0, 0), bool transpose = false) {
#pragma unroll
  for (int j = 0; j < 2; ++j) d.el[j] = T(src[fragment_offset(j, elements_per_row, origin, transpose)]);
}
template <class T, int R, int C, class P>
__device__ void simdgroup_store(const simdgroup_matrix<T, R, C>& s, P dst, ulong elements_per_row = C,
                                ulong2 origin = ulong2(0, 0), bool transpose = false) {
#pragma unroll
  for (int j = 0; j < 2; ++j) dst[fragment_offset(j, elements_per_row, origin, transpose)] = s.el[j];
}
template <class T, class U, class V, int N>
__device__ void simdgroup_multiply_accumulate(simdgroup_matrix<T, N, N>& d, const simdgroup_matrix<U, N, N>& a,
                                              const simdgroup_matrix<V, N, N>& b,
                                              const simdgroup_matrix<T, N, N>& c) {
  const unsigned full = 0xffffffffu;
  const int l = (int)mtl::lane_id(), r = sg_frag_row(l), c0 = sg_frag_col(l);
  const ::float2 av = ::make_float2(float(a.el[0]), float(a.el[1]));
  const ::float2 bv = ::make_float2(float(b.el[0]), float(b.el[1]));
  float s0 = float(c.el[0]), s1 = float(c.el[1]);
#pragma unroll
  for (int kp = 0; kp < N; kp += 2) {
    // A(r, kp..kp+1) is one lane's pair; B(kp, c0..c0+1) and B(kp+1, c0..c0+1) one pair each.
    const ::float2 ak = mtl::shfl(av, sg_frag_lane(r, kp), full);
    const ::float2 b0 = mtl::shfl(bv, sg_frag_lane(kp, c0), full);
    const ::float2 b1 = mtl::shfl(bv, sg_frag_lane(kp + 1, c0), full);
    s0 = fmaf(ak.x, b0.x, s0);
    s1 = fmaf(ak.x, b0.y, s1);
    s0 = fmaf(ak.y, b1.x, s0);
    s1 = fmaf(ak.y, b1.y, s1);
  }
  d.el[0] = T(s0);
  d.el[1] = T(s1);
}
template <class T, class U, class V, int N>
__device__ void simdgroup_multiply(simdgroup_matrix<T, N, N>& d, const simdgroup_matrix<U, N, N>& a,
                                   const simdgroup_matrix<V, N, N>& b) {
  simdgroup_multiply_accumulate(d, a, b, simdgroup_matrix<T, N, N>());
}
}  // namespace metal

// Address spaces (device, constant, threadgroup, thread) are removed by the back end's rewrite.
