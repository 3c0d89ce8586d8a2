// 8x8 simdgroup-matrix fragments: Apple's per-lane layout and the element-wise operations the
// matrix kernels (flash_simdgroup.metal) build on.
//
// Layout of a simdgroup_matrix<T, 8, 8> over the 32 lanes of a SIMD-group (thread_elements()):
// lane l holds row (l / 16) * 4 + (l / 2) % 4 and the two columns ((l / 8) % 2) * 4 + (l % 2) * 2
// and that plus 1. The four lanes that share a row differ in lane bits 0 and 3, so a row reduction
// is two simd_shuffle_xor steps (1, 8). Both back ends of the MSL front end (emulator, CUDA) keep
// the same layout, so the kernels' index arithmetic is checked wherever they run.
//
// Operands are loaded element by element through thread_elements() (not simdgroup_load): the
// staged type (half, float) converts to the float matrices on the way, rows and columns outside the
// problem read as zero, and a transposed operand is only a different index.
#pragma once

struct FragPos {
  int row;   // the lane's row in every 8x8 fragment
  int col;   // its first column (it holds col and col + 1)
};

inline FragPos frag_pos(ushort lane) {
  FragPos p;
  p.row = ((int(lane) >> 4) << 2) + ((int(lane) >> 1) & 3);
  p.col = (((int(lane) >> 3) & 1) << 2) + ((int(lane) & 1) << 1);
  return p;
}

inline simdgroup_float8x8 frag_zero() { return make_filled_simdgroup_matrix<float, 8, 8>(0.0f); }

// m(r, c) = src[(r0 + r) * rs + c0 + c]
template <typename P>
inline void frag_load(thread simdgroup_float8x8& m, P src, int rs, int r0, int c0, FragPos p) {
  const int o = (r0 + p.row) * rs + c0 + p.col;
  m.thread_elements()[0] = float(src[o]);
  m.thread_elements()[1] = float(src[o + 1]);
}

// m(r, c) = src[(r0 + c) * rs + c0 + r]: the transpose of the rows r0.. read as columns.
template <typename P>
inline void frag_load_t(thread simdgroup_float8x8& m, P src, int rs, int r0, int c0, FragPos p) {
  const int o = (r0 + p.col) * rs + c0 + p.row;
  m.thread_elements()[0] = float(src[o]);
  m.thread_elements()[1] = float(src[o + rs]);
}

// Row reductions over the four lanes that share a fragment row.
inline float row_max(float x) {
  x = max(x, simd_shuffle_xor(x, ushort(1)));
  return max(x, simd_shuffle_xor(x, ushort(8)));
}
inline float row_sum(float x) {
  x += simd_shuffle_xor(x, ushort(1));
  return x + simd_shuffle_xor(x, ushort(8));
}

// acc += A x B where B(k, c) = b[(k0 + k) * rs + c0 + c], keeping only the terms lo <= k <= hi of
// this lane's row (a per-lane interval): the masked terms are skipped, not multiplied by zero, so a
// non-finite B row never reaches a row that does not see it (a matrix product would give 0 * inf =
// NaN). Used on the few causal diagonal blocks; the lane gathers its row of A from the three lanes
// that share it (two exchanges a pair) and makes the 16 FMAs a product costs a lane.
template <typename P>
inline void mma_masked(thread simdgroup_float8x8& acc, simdgroup_float8x8 a, P b, int rs, int k0,
                       int c0, int lo, int hi, FragPos p) {
  const float2 mine = float2(a.thread_elements()[0], a.thread_elements()[1]);
  const float2 x1 = simd_shuffle_xor(mine, ushort(1));   // columns col ^ 2
  const float2 x8 = simd_shuffle_xor(mine, ushort(8));   // columns col ^ 4
  const float2 x9 = simd_shuffle_xor(mine, ushort(9));   // columns col ^ 6
  float s0 = acc.thread_elements()[0], s1 = acc.thread_elements()[1];
  for (int k = 0; k < 8; ++k) {
    const int blk = ((k ^ p.col) >> 1) & 3;
    const float2 pair = blk == 0 ? mine : (blk == 1 ? x1 : (blk == 2 ? x8 : x9));
    const float ak = (k & 1) ? pair.y : pair.x;
    if (k >= lo && k <= hi) {
      const int o = (k0 + k) * rs + c0 + p.col;
      s0 = fma(ak, float(b[o]), s0);
      s1 = fma(ak, float(b[o + 1]), s1);
    }
  }
  acc.thread_elements()[0] = s0;
  acc.thread_elements()[1] = s1;
}
