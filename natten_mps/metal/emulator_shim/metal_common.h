// The value semantics of the MSL subset, shared by both back ends of the MSL front end:
// the CPU emulator (metal_stdlib beside this file) and the CUDA translation (metal_stdlib_cuda.cuh).
//
// A back end includes this header after defining
//   MTL_FN                 the function qualifiers ("inline" on CPU, "__device__ inline" on CUDA)
//   mtl_f32_to_f16_bits    float -> IEEE binary16 bits, round to nearest even
//   mtl_f16_bits_to_f32    IEEE binary16 bits -> float
// and gets, in namespace mtl: half, bfloat (one rounding per operation), vec<T, N>; in namespace
// metal: the MSL scalar/vector type names, the math library (metal::, fast::, precise::) and
// numeric_limits. Synchronisation, memory and dispatch are each back end's own.
#pragma once

namespace mtl {

// ---------------------------------------------------------------------------------------------
// half and bfloat
// ---------------------------------------------------------------------------------------------
MTL_FN uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
MTL_FN float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

struct half {
  uint16_t bits;
  half() = default;
  MTL_FN half(float f) : bits(mtl_f32_to_f16_bits(f)) {}
  MTL_FN half(double f) : bits(mtl_f32_to_f16_bits((float)f)) {}
  MTL_FN half(int i) : bits(mtl_f32_to_f16_bits((float)i)) {}
  MTL_FN half(unsigned i) : bits(mtl_f32_to_f16_bits((float)i)) {}
  MTL_FN half(long i) : bits(mtl_f32_to_f16_bits((float)i)) {}
  MTL_FN half(unsigned long i) : bits(mtl_f32_to_f16_bits((float)i)) {}
  MTL_FN half(long long i) : bits(mtl_f32_to_f16_bits((float)i)) {}
  MTL_FN operator float() const { return mtl_f16_bits_to_f32(bits); }
};

struct bfloat {
  uint16_t bits;
  bfloat() = default;
  MTL_FN static uint16_t round(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                               // nearest-even
    return (uint16_t)(u >> 16);
  }
  MTL_FN bfloat(float f) : bits(round(f)) {}
  MTL_FN bfloat(double f) : bits(round((float)f)) {}
  MTL_FN bfloat(int i) : bits(round((float)i)) {}
  MTL_FN bfloat(unsigned i) : bits(round((float)i)) {}
  MTL_FN bfloat(long i) : bits(round((float)i)) {}
  MTL_FN bfloat(long long i) : bits(round((float)i)) {}
  MTL_FN operator float() const { return f32_from_bits((uint32_t)bits << 16); }
};

// Arithmetic: a half op half is computed exactly in float and rounded once (float carries enough
// bits for +, -, *, / so the double rounding is harmless); mixing with float promotes to float.
#define MTL_LOWP_OPS(LT)                                                                  \
  MTL_FN LT operator+(LT a, LT b) { return LT(float(a) + float(b)); }                     \
  MTL_FN LT operator-(LT a, LT b) { return LT(float(a) - float(b)); }                     \
  MTL_FN LT operator*(LT a, LT b) { return LT(float(a) * float(b)); }                     \
  MTL_FN LT operator/(LT a, LT b) { return LT(float(a) / float(b)); }                     \
  MTL_FN LT operator-(LT a) { return LT(-float(a)); }                                     \
  MTL_FN LT& operator+=(LT& a, LT b) { return a = a + b; }                                \
  MTL_FN LT& operator-=(LT& a, LT b) { return a = a - b; }                                \
  MTL_FN LT& operator*=(LT& a, LT b) { return a = a * b; }                                \
  MTL_FN LT& operator/=(LT& a, LT b) { return a = a / b; }                                \
  MTL_FN float operator+(LT a, float b) { return float(a) + b; }                          \
  MTL_FN float operator-(LT a, float b) { return float(a) - b; }                          \
  MTL_FN float operator*(LT a, float b) { return float(a) * b; }                          \
  MTL_FN float operator/(LT a, float b) { return float(a) / b; }                          \
  MTL_FN float operator+(float a, LT b) { return a + float(b); }                          \
  MTL_FN float operator-(float a, LT b) { return a - float(b); }                          \
  MTL_FN float operator*(float a, LT b) { return a * float(b); }                          \
  MTL_FN float operator/(float a, LT b) { return a / float(b); }                          \
  MTL_FN float operator+(LT a, double b) { return float(a) + (float)b; }                  \
  MTL_FN float operator-(LT a, double b) { return float(a) - (float)b; }                  \
  MTL_FN float operator*(LT a, double b) { return float(a) * (float)b; }                  \
  MTL_FN float operator/(LT a, double b) { return float(a) / (float)b; }                  \
  MTL_FN float operator+(double a, LT b) { return (float)a + float(b); }                  \
  MTL_FN float operator-(double a, LT b) { return (float)a - float(b); }                  \
  MTL_FN float operator*(double a, LT b) { return (float)a * float(b); }                  \
  MTL_FN float operator/(double a, LT b) { return (float)a / float(b); }                  \
  MTL_FN LT operator+(LT a, int b) { return a + LT(b); }                                  \
  MTL_FN LT operator*(LT a, int b) { return a * LT(b); }                                  \
  MTL_FN LT operator*(int a, LT b) { return LT(a) * b; }                                  \
  MTL_FN bool operator<(LT a, LT b) { return float(a) < float(b); }                       \
  MTL_FN bool operator>(LT a, LT b) { return float(a) > float(b); }                       \
  MTL_FN bool operator<=(LT a, LT b) { return float(a) <= float(b); }                     \
  MTL_FN bool operator>=(LT a, LT b) { return float(a) >= float(b); }                     \
  MTL_FN bool operator==(LT a, LT b) { return float(a) == float(b); }                     \
  MTL_FN bool operator!=(LT a, LT b) { return float(a) != float(b); }                     \
  MTL_FN bool operator<(LT a, float b) { return float(a) < b; }                           \
  MTL_FN bool operator>(LT a, float b) { return float(a) > b; }                           \
  MTL_FN bool operator<(float a, LT b) { return a < float(b); }                           \
  MTL_FN bool operator>(float a, LT b) { return a > float(b); }
MTL_LOWP_OPS(half)
MTL_LOWP_OPS(bfloat)
#undef MTL_LOWP_OPS

template <class T> struct is_scalar : std::integral_constant<bool, std::is_arithmetic<T>::value ||
    std::is_same<T, half>::value || std::is_same<T, bfloat>::value> {};

// ---------------------------------------------------------------------------------------------
// Vectors (2, 3, 4 components; members x y z w and operator[])
// ---------------------------------------------------------------------------------------------
template <class T, int N> struct vec;
template <class T> struct alignas(2 * sizeof(T)) vec<T, 2> {   // MSL alignment
  T x, y;
  vec() = default;
  MTL_FN vec(T s) : x(s), y(s) {}
  MTL_FN vec(T a, T b) : x(a), y(b) {}
  template <class U> MTL_FN explicit vec(const vec<U, 2>& o) : x(T(o.x)), y(T(o.y)) {}
  MTL_FN T& operator[](int i) { return (&x)[i]; }
  MTL_FN const T& operator[](int i) const { return (&x)[i]; }
};
template <class T> struct vec<T, 3> {
  T x, y, z;
  vec() = default;
  MTL_FN vec(T s) : x(s), y(s), z(s) {}
  MTL_FN vec(T a, T b, T c) : x(a), y(b), z(c) {}
  template <class U> MTL_FN explicit vec(const vec<U, 3>& o) : x(T(o.x)), y(T(o.y)), z(T(o.z)) {}
  MTL_FN T& operator[](int i) { return (&x)[i]; }
  MTL_FN const T& operator[](int i) const { return (&x)[i]; }
};
template <class T> struct alignas(4 * sizeof(T)) vec<T, 4> {
  T x, y, z, w;
  vec() = default;
  MTL_FN vec(T s) : x(s), y(s), z(s), w(s) {}
  MTL_FN vec(T a, T b, T c, T d) : x(a), y(b), z(c), w(d) {}
  MTL_FN vec(vec<T, 2> a, vec<T, 2> b) : x(a.x), y(a.y), z(b.x), w(b.y) {}
  template <class U> MTL_FN explicit vec(const vec<U, 4>& o) : x(T(o.x)), y(T(o.y)), z(T(o.z)), w(T(o.w)) {}
  MTL_FN T& operator[](int i) { return (&x)[i]; }
  MTL_FN const T& operator[](int i) const { return (&x)[i]; }
};

#define MTL_VEC_BINOP(OP)                                                                        \
  template <class T, int N> MTL_FN vec<T, N> operator OP(const vec<T, N>& a, const vec<T, N>& b) { \
    vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = T(a[i] OP b[i]); return r; }                 \
  template <class T, int N, class S, class = std::enable_if_t<is_scalar<S>::value>>               \
  MTL_FN vec<T, N> operator OP(const vec<T, N>& a, S s) {                                        \
    vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = T(a[i] OP T(s)); return r; }                 \
  template <class T, int N, class S, class = std::enable_if_t<is_scalar<S>::value>>               \
  MTL_FN vec<T, N> operator OP(S s, const vec<T, N>& a) {                                        \
    vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = T(T(s) OP a[i]); return r; }                 \
  template <class T, int N> MTL_FN vec<T, N>& operator OP##=(vec<T, N>& a, const vec<T, N>& b) { \
    return a = a OP b; }                                                                         \
  template <class T, int N, class S, class = std::enable_if_t<is_scalar<S>::value>>               \
  MTL_FN vec<T, N>& operator OP##=(vec<T, N>& a, S s) { return a = a OP s; }
MTL_VEC_BINOP(+)
MTL_VEC_BINOP(-)
MTL_VEC_BINOP(*)
MTL_VEC_BINOP(/)
#undef MTL_VEC_BINOP
template <class T, int N> MTL_FN vec<T, N> operator-(const vec<T, N>& a) {
  vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = T(-a[i]); return r;
}

// ---------------------------------------------------------------------------------------------
// Thread-position attributes, converted to the type the kernel declares
// ---------------------------------------------------------------------------------------------
struct Pos { uint32_t v[3]; };
template <class T> struct pos_as { static MTL_FN T get(const Pos& p) { return T(p.v[0]); } };
template <class T> struct pos_as<vec<T, 2>> {
  static MTL_FN vec<T, 2> get(const Pos& p) { return vec<T, 2>(T(p.v[0]), T(p.v[1])); } };
template <class T> struct pos_as<vec<T, 3>> {
  static MTL_FN vec<T, 3> get(const Pos& p) { return vec<T, 3>(T(p.v[0]), T(p.v[1]), T(p.v[2])); } };

struct ThreadAttrs {
  Pos thread_position_in_grid, thread_position_in_threadgroup, threadgroup_position_in_grid,
      threads_per_threadgroup, threadgroups_per_grid, threads_per_grid,
      dispatch_threads_per_threadgroup, thread_index_in_threadgroup, thread_index_in_simdgroup,
      simdgroup_index_in_threadgroup, threads_per_simdgroup, thread_execution_width,
      simdgroups_per_threadgroup;
};
// gid: this threadgroup's position; size: its (possibly partial) size; dispatch: the full size;
// grid: threads in the grid; groups: threadgroups in the grid; tid: linear index in the group.
MTL_FN ThreadAttrs make_thread_attrs(const uint32_t* gid, const uint32_t* size, const uint32_t* dispatch,
                                     const uint32_t* grid, const uint32_t* groups, uint32_t tid) {
  ThreadAttrs a;
  uint32_t l[3] = {tid % size[0], (tid / size[0]) % size[1], tid / (size[0] * size[1])};
  for (int d = 0; d < 3; ++d) {
    a.thread_position_in_grid.v[d] = gid[d] * dispatch[d] + l[d];
    a.thread_position_in_threadgroup.v[d] = l[d];
    a.threadgroup_position_in_grid.v[d] = gid[d];
    a.threads_per_threadgroup.v[d] = size[d];
    a.threadgroups_per_grid.v[d] = groups[d];
    a.threads_per_grid.v[d] = grid[d];
    a.dispatch_threads_per_threadgroup.v[d] = dispatch[d];
  }
  Pos s{{0, 0, 0}};
  s.v[0] = tid; a.thread_index_in_threadgroup = s;
  s.v[0] = tid % 32; a.thread_index_in_simdgroup = s;
  s.v[0] = tid / 32; a.simdgroup_index_in_threadgroup = s;
  s.v[0] = 32; a.threads_per_simdgroup = s; a.thread_execution_width = s;
  s.v[0] = (size[0] * size[1] * size[2] + 31) / 32; a.simdgroups_per_threadgroup = s;
  return a;
}

}  // namespace mtl

// ---------------------------------------------------------------------------------------------
// The names shaders see
// ---------------------------------------------------------------------------------------------
namespace metal {
template <class T, int N> using vec = mtl::vec<T, N>;     // MSL's generic vector name
enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
MTL_FN mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }
using mtl::half;
using mtl::bfloat;
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
#define MTL_VEC_TYPEDEFS(T, NAME)                                                           \
  typedef mtl::vec<T, 2> NAME##2; typedef mtl::vec<T, 3> NAME##3; typedef mtl::vec<T, 4> NAME##4;
MTL_VEC_TYPEDEFS(float, float)
MTL_VEC_TYPEDEFS(half, half)
MTL_VEC_TYPEDEFS(bfloat, bfloat)
MTL_VEC_TYPEDEFS(int, int)
MTL_VEC_TYPEDEFS(signed char, char)   // MSL's char is signed (the back ends also build with -fsigned-char)
MTL_VEC_TYPEDEFS(uchar, uchar)
MTL_VEC_TYPEDEFS(uint, uint)
MTL_VEC_TYPEDEFS(short, short)
MTL_VEC_TYPEDEFS(ushort, ushort)
MTL_VEC_TYPEDEFS(long, long)
MTL_VEC_TYPEDEFS(ulong, ulong)
MTL_VEC_TYPEDEFS(bool, bool)
#undef MTL_VEC_TYPEDEFS

// ---- math library -------------------------------------------------------------------------
#define MTL_UNARY(NAME, EXPR)                                                     \
  MTL_FN float NAME(float x) { return EXPR; }                                     \
  MTL_FN half NAME(half h) { float x = float(h); return half(EXPR); }             \
  MTL_FN bfloat NAME(bfloat h) { float x = float(h); return bfloat(EXPR); }       \
  template <class T, int N> MTL_FN mtl::vec<T, N> NAME(const mtl::vec<T, N>& v) { \
    mtl::vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = NAME(v[i]); return r; }
MTL_UNARY(exp, ::expf(x))
MTL_UNARY(exp2, ::exp2f(x))
MTL_UNARY(log, ::logf(x))
MTL_UNARY(log2, ::log2f(x))
MTL_UNARY(sqrt, ::sqrtf(x))
MTL_UNARY(rsqrt, 1.0f / ::sqrtf(x))
MTL_UNARY(fabs, ::fabsf(x))
MTL_UNARY(tanh, ::tanhf(x))
MTL_UNARY(sin, ::sinf(x))
MTL_UNARY(cos, ::cosf(x))
MTL_UNARY(floor, ::floorf(x))
MTL_UNARY(ceil, ::ceilf(x))
MTL_UNARY(round, ::roundf(x))
MTL_UNARY(trunc, ::truncf(x))
#undef MTL_UNARY
MTL_FN float abs(float x) { return ::fabsf(x); }
MTL_FN half abs(half x) { return half(::fabsf(float(x))); }
MTL_FN int abs(int x) { return x < 0 ? -x : x; }
MTL_FN long abs(long x) { return x < 0 ? -x : x; }
MTL_FN bool isnan(float x) { return x != x; }
MTL_FN bool isinf(float x) { return ::fabsf(x) == INFINITY; }
MTL_FN bool isfinite(float x) { return !(x != x) && ::fabsf(x) != INFINITY; }
MTL_FN float pow(float a, float b) { return ::powf(a, b); }
MTL_FN float fma(float a, float b, float c) { return ::fmaf(a, b, c); }
MTL_FN half fma(half a, half b, half c) { return half(::fmaf(float(a), float(b), float(c))); }
// Metal's max/min on floats follow fmax/fmin: a NaN operand yields the other operand.
MTL_FN float max(float a, float b) { return ::fmaxf(a, b); }
MTL_FN float min(float a, float b) { return ::fminf(a, b); }
MTL_FN float fmax(float a, float b) { return ::fmaxf(a, b); }
MTL_FN float fmin(float a, float b) { return ::fminf(a, b); }
MTL_FN half max(half a, half b) { return half(::fmaxf(float(a), float(b))); }
MTL_FN half min(half a, half b) { return half(::fminf(float(a), float(b))); }
MTL_FN bfloat max(bfloat a, bfloat b) { return bfloat(::fmaxf(float(a), float(b))); }
MTL_FN bfloat min(bfloat a, bfloat b) { return bfloat(::fminf(float(a), float(b))); }
#define MTL_INT_MINMAX(T)                                                                  \
  MTL_FN T max(T a, T b) { return a > b ? a : b; }                                         \
  MTL_FN T min(T a, T b) { return a < b ? a : b; }                                         \
  MTL_FN T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
MTL_INT_MINMAX(int) MTL_INT_MINMAX(uint) MTL_INT_MINMAX(long) MTL_INT_MINMAX(ulong)
MTL_INT_MINMAX(short) MTL_INT_MINMAX(ushort)
#undef MTL_INT_MINMAX
MTL_FN float clamp(float x, float lo, float hi) { return ::fminf(::fmaxf(x, lo), hi); }
MTL_FN half clamp(half x, half lo, half hi) { return min(max(x, lo), hi); }
template <class T, int N> MTL_FN mtl::vec<T, N> max(const mtl::vec<T, N>& a, const mtl::vec<T, N>& b) {
  mtl::vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = max(a[i], b[i]); return r; }
template <class T, int N> MTL_FN mtl::vec<T, N> min(const mtl::vec<T, N>& a, const mtl::vec<T, N>& b) {
  mtl::vec<T, N> r; for (int i = 0; i < N; ++i) r[i] = min(a[i], b[i]); return r; }
template <class T, int N> MTL_FN T dot(const mtl::vec<T, N>& a, const mtl::vec<T, N>& b) {
  float s = 0.0f; for (int i = 0; i < N; ++i) s += float(a[i]) * float(b[i]); return T(s); }
template <class T> MTL_FN T select(T a, T b, bool c) { return c ? b : a; }
template <class To, class From> MTL_FN To as_type(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "as_type needs types of equal size");
  To t; memcpy(&t, &f, sizeof(To)); return t;
}

// fast:: and precise:: — each back end maps them to its own fast and exact routines.
namespace fast {
MTL_FN float exp(float x) { return MTL_FAST_EXP(x); }
MTL_FN float exp2(float x) { return MTL_FAST_EXP2(x); }
MTL_FN float log(float x) { return MTL_FAST_LOG(x); }
MTL_FN float log2(float x) { return MTL_FAST_LOG2(x); }
MTL_FN float rsqrt(float x) { return MTL_FAST_RSQRT(x); }
MTL_FN float sqrt(float x) { return ::sqrtf(x); }
MTL_FN float max(float a, float b) { return ::fmaxf(a, b); }
MTL_FN float min(float a, float b) { return ::fminf(a, b); }
MTL_FN float tanh(float x) { return ::tanhf(x); }
}  // namespace fast
namespace precise {
MTL_FN float exp(float x) { return ::expf(x); }
MTL_FN float exp2(float x) { return ::exp2f(x); }
MTL_FN float log(float x) { return ::logf(x); }
MTL_FN float log2(float x) { return ::log2f(x); }
MTL_FN float rsqrt(float x) { return 1.0f / ::sqrtf(x); }
MTL_FN float sqrt(float x) { return ::sqrtf(x); }
MTL_FN float tanh(float x) { return ::tanhf(x); }
}  // namespace precise

template <class T> struct numeric_limits {
  static constexpr MTL_FN T infinity() { return std::numeric_limits<T>::infinity(); }
  static constexpr MTL_FN T max() { return std::numeric_limits<T>::max(); }
  static constexpr MTL_FN T lowest() { return std::numeric_limits<T>::lowest(); }
  static constexpr MTL_FN T min() { return std::numeric_limits<T>::min(); }
  static constexpr MTL_FN T quiet_NaN() { return std::numeric_limits<T>::quiet_NaN(); }
};
template <> struct numeric_limits<half> {
  static MTL_FN half infinity() { return half(INFINITY); }
  static MTL_FN half max() { return half(65504.0f); }
  static MTL_FN half lowest() { return half(-65504.0f); }
  static MTL_FN half quiet_NaN() { return half(NAN); }
};
}  // namespace metal
