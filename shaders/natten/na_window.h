// Neighborhood window rule of upstream NATTEN, one axis at a time (see natten_mps/semantics.py
// for the rule in words). All quantities are in the coordinates of one dilation group.
// Templated on the integer type: the tiled kernels use 32-bit int (cheap on a GPU), the
// per-query baseline kernel 64-bit long.
#pragma once

template <typename I>
struct AxisWindowT {
  I lo;   // first key (group coordinates), inclusive
  I hi;   // last key, inclusive
};
typedef AxisWindowT<long> AxisWindow;

// query: group coordinate of the query; group_len: positions in its dilation group.
template <typename I>
inline AxisWindowT<I> na_axis_window(I query, I group_len, I kernel_size, I stride, bool causal) {
  I run_start = stride == 1 ? query : (query / stride) * stride;   // (no integer division at stride 1)
  AxisWindowT<I> w;
  if (causal) {
    I leader = min(run_start + stride - 1, group_len - 1);
    w.lo = max(leader - kernel_size + 1, I(0));
    w.hi = query;
    return w;
  }
  I left = kernel_size >> 1;                  // kernel_size, stride >= 1: shifts, not signed divisions
  I right = left - (1 - (kernel_size & 1));
  I leader = min(run_start + (stride >> 1), group_len - 1);
  I centre = clamp(leader, left, group_len - 1 - right);
  w.lo = centre - left;
  w.hi = centre + right;
  return w;
}

// Positions of dilation group `group` on an axis of `length`.
inline long na_group_length(long length, long dilation, long group) {
  return length / dilation + (group < length % dilation ? 1 : 0);
}
