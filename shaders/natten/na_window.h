// Neighborhood window rule of upstream NATTEN, one axis at a time (see natten_mps/semantics.py
// for the rule in words). All quantities are in the coordinates of one dilation group.
#pragma once

struct AxisWindow {
  long lo;   // first key (group coordinates), inclusive
  long hi;   // last key, inclusive
};

// query: group coordinate of the query; group_len: positions in its dilation group.
inline AxisWindow na_axis_window(long query, long group_len, long kernel_size, long stride, bool causal) {
  long run_start = (query / stride) * stride;
  AxisWindow w;
  if (causal) {
    long leader = min(run_start + stride - 1, group_len - 1);
    w.lo = max(leader - kernel_size + 1, 0L);
    w.hi = query;
    return w;
  }
  long left = kernel_size / 2;
  long right = kernel_size / 2 - (1 - kernel_size % 2);
  long leader = min(run_start + stride / 2, group_len - 1);
  long centre = clamp(leader, left, group_len - 1 - right);
  w.lo = centre - left;
  w.hi = centre + right;
  return w;
}

// Positions of dilation group `group` on an axis of `length`.
inline long na_group_length(long length, long dilation, long group) {
  return length / dilation + (group < length % dilation ? 1 : 0);
}
