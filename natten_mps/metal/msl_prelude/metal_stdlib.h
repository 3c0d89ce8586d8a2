// Declaration-only stand-in for <metal_stdlib>, parsed by natten_mps/metal/clang_check.py.
//
// Two modes, one header:
//   * OpenCL C++ (clang -x clcpp -cl-std=clc++2021): MSL's address spaces become OpenCL's, which
//     clang keeps disjoint (device -> __global, threadgroup -> __local, constant -> __constant,
//     thread -> __private); a pointer or reference written without one is __generic, which the
//     check reports. Vector types are clang ext_vector_type vectors (OpenCL conversion rules).
//   * C++14 (clang -x c++ -std=c++14): the same declarations with address spaces spelled as nothing,
//     to find constructs newer than C++14 (MSL is based on C++14).
// Nothing here is ever compiled to code: every function is a declaration. The C++ subset used here
// is C++14, so the header itself parses in both modes.
#pragma once

#ifdef __OPENCL_CPP_VERSION__
#pragma OPENCL EXTENSION cl_khr_fp16 : enable
#define MSL_DEVICE __global
#define MSL_CONSTANT __constant
#define MSL_THREADGROUP __local
#define MSL_THREAD __private
typedef half msl_half_t;
#else
#define MSL_DEVICE
#define MSL_CONSTANT
#define MSL_THREADGROUP
#define MSL_THREAD
typedef _Float16 msl_half_t;
typedef _Float16 half;
#endif

#define device MSL_DEVICE
#define constant MSL_CONSTANT
#define threadgroup MSL_THREADGROUP
#define thread MSL_THREAD
// An MSL kernel: an annotation the check finds on the AST (OpenCL's __kernel cannot be a template).
#define kernel __attribute__((annotate("msl_kernel")))

#ifndef __METAL_VERSION__
#define __METAL_VERSION__ 310
#endif
#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define HUGE_VALF __builtin_huge_valf()
#define MAXFLOAT 0x1.fffffep+127f
#define FLT_MAX 0x1.fffffep+127f
#define FLT_MIN 0x1.0p-126f
#define FLT_EPSILON 0x1.0p-23f
#define M_PI_F 3.14159265358979323846f
#define M_LN2_F 0.693147180559945309417f
#define M_LOG2E_F 1.44269504088896340736f
#define is_function_constant_defined(x) true

typedef __bf16 bfloat;
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef unsigned long ulong;
typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long int64_t;
typedef unsigned long uint64_t;

#define MSL_VECTOR_TYPES(T, NAME)                                                            \
  typedef T NAME##2 __attribute__((ext_vector_type(2)));                                     \
  typedef T NAME##3 __attribute__((ext_vector_type(3)));                                     \
  typedef T NAME##4 __attribute__((ext_vector_type(4)));                                     \
  typedef T packed_##NAME##2 __attribute__((ext_vector_type(2)));                            \
  typedef T packed_##NAME##3 __attribute__((ext_vector_type(3)));                            \
  typedef T packed_##NAME##4 __attribute__((ext_vector_type(4)));
MSL_VECTOR_TYPES(float, float)
MSL_VECTOR_TYPES(msl_half_t, half)
MSL_VECTOR_TYPES(bfloat, bfloat)
MSL_VECTOR_TYPES(int, int)
MSL_VECTOR_TYPES(uint, uint)
MSL_VECTOR_TYPES(short, short)
MSL_VECTOR_TYPES(ushort, ushort)
MSL_VECTOR_TYPES(char, char)
MSL_VECTOR_TYPES(uchar, uchar)
MSL_VECTOR_TYPES(long, long)
MSL_VECTOR_TYPES(ulong, ulong)
#undef MSL_VECTOR_TYPES
// OpenCL has no bool vectors (its comparisons give int vectors): boolN is a char vector there.
#ifdef __OPENCL_CPP_VERSION__
typedef char msl_bool_elem_t;
#else
typedef bool msl_bool_elem_t;
#endif
typedef msl_bool_elem_t bool2 __attribute__((ext_vector_type(2)));
typedef msl_bool_elem_t bool3 __attribute__((ext_vector_type(3)));
typedef msl_bool_elem_t bool4 __attribute__((ext_vector_type(4)));

namespace metal {

template <class T, int N> using vec = T __attribute__((ext_vector_type(N)));

// ---- type traits (C++14 forms) -----------------------------------------------------------------
template <class T, T v> struct integral_constant { static constexpr T value = v; };
typedef integral_constant<bool, true> true_type;
typedef integral_constant<bool, false> false_type;
template <class A, class B> struct is_same : false_type {};
template <class A> struct is_same<A, A> : true_type {};
template <bool B, class T = void> struct enable_if {};
template <class T> struct enable_if<true, T> { typedef T type; };
template <bool B, class T = void> using enable_if_t = typename enable_if<B, T>::type;
template <bool B, class T, class F> struct conditional { typedef T type; };
template <class T, class F> struct conditional<false, T, F> { typedef F type; };
template <bool B, class T, class F> using conditional_t = typename conditional<B, T, F>::type;
template <class T> struct remove_cv { typedef T type; };
template <class T> struct remove_cv<const T> { typedef T type; };

// ---- vector construction -------------------------------------------------------------------------
// MSL's vector constructors (float4(x), float4(a, b, c, d), float4(float2, float2), float4(half4))
// are rewritten by the check to msl_make_vector<float4>(...): no argument (zero), one scalar
// (replicated), or scalars and vectors whose lengths add up to N (one vector of length N: an explicit
// conversion); never a longer vector (no truncation).
template <class X> struct msl_vector_info { static constexpr int n = 1; typedef X elem; };
template <class X, int N> struct msl_vector_info<vec<X, N>> { static constexpr int n = N; typedef X elem; };
template <class X> struct msl_vector_info<const X> : msl_vector_info<X> {};
template <class... A> struct msl_components;
template <> struct msl_components<> { static constexpr int n = 0; };
template <class A, class... R> struct msl_components<A, R...> {
  static constexpr int n = msl_vector_info<A>::n + msl_components<R...>::n;
};
template <class... A> struct msl_one_scalar { static constexpr bool value = false; };
template <class A> struct msl_one_scalar<A> { static constexpr bool value = msl_vector_info<A>::n == 1; };
template <class V, class... A,
          class = enable_if_t<(msl_vector_info<V>::n > 1) &&
                              (sizeof...(A) == 0 || msl_one_scalar<A...>::value ||
                               msl_components<A...>::n == msl_vector_info<V>::n)>>
V msl_make_vector(A... a);

// Threadgroup variables are rewritten to references to this storage (see clang_check.py).
template <class X> threadgroup X* msl_threadgroup_storage();

// ---- synchronisation ---------------------------------------------------------------------------
enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4, mem_threadgroup_imageblock = 8 };
mem_flags operator|(mem_flags a, mem_flags b);
void threadgroup_barrier(mem_flags f);
void simdgroup_barrier(mem_flags f);

// ---- SIMD-group functions (scalars and vectors) -------------------------------------------------
template <class T> T simd_sum(T v);
template <class T> T simd_product(T v);
template <class T> T simd_max(T v);
template <class T> T simd_min(T v);
template <class T> T simd_and(T v);
template <class T> T simd_or(T v);
template <class T> T simd_xor(T v);
template <class T> T simd_prefix_exclusive_sum(T v);
template <class T> T simd_prefix_inclusive_sum(T v);
template <class T> T simd_prefix_exclusive_product(T v);
template <class T> T simd_prefix_inclusive_product(T v);
template <class T> T simd_shuffle(T v, ushort lane);
template <class T> T simd_broadcast(T v, ushort lane);
template <class T> T simd_broadcast_first(T v);
template <class T> T simd_shuffle_xor(T v, ushort mask);
template <class T> T simd_shuffle_down(T v, ushort delta);
template <class T> T simd_shuffle_up(T v, ushort delta);
template <class T> T simd_shuffle_rotate_down(T v, ushort delta);
template <class T> T simd_shuffle_rotate_up(T v, ushort delta);
template <class T> T quad_sum(T v);
template <class T> T quad_max(T v);
template <class T> T quad_min(T v);
template <class T> T quad_shuffle(T v, ushort lane);
template <class T> T quad_shuffle_xor(T v, ushort mask);
template <class T> T quad_shuffle_down(T v, ushort delta);
template <class T> T quad_shuffle_up(T v, ushort delta);
template <class T> T quad_broadcast(T v, ushort lane);
bool simd_all(bool c);
bool simd_any(bool c);
bool simd_is_first();

// ---- math ----------------------------------------------------------------------------------------
#define MSL_UNARY(NAME)                                                                      \
  float NAME(float x);                                                                       \
  msl_half_t NAME(msl_half_t x);                                                             \
  template <class T, int N> vec<T, N> NAME(vec<T, N> x);
#define MSL_BINARY(NAME)                                                                     \
  float NAME(float x, float y);                                                              \
  msl_half_t NAME(msl_half_t x, msl_half_t y);                                               \
  template <class T, int N> vec<T, N> NAME(vec<T, N> x, vec<T, N> y);
#define MSL_TERNARY(NAME)                                                                    \
  float NAME(float x, float y, float z);                                                     \
  msl_half_t NAME(msl_half_t x, msl_half_t y, msl_half_t z);                                 \
  template <class T, int N> vec<T, N> NAME(vec<T, N> x, vec<T, N> y, vec<T, N> z);
#define MSL_MATH                                                                             \
  MSL_UNARY(exp) MSL_UNARY(exp2) MSL_UNARY(exp10) MSL_UNARY(log) MSL_UNARY(log2)             \
  MSL_UNARY(log10) MSL_UNARY(sqrt) MSL_UNARY(rsqrt) MSL_UNARY(fabs) MSL_UNARY(tanh)          \
  MSL_UNARY(sin) MSL_UNARY(cos) MSL_UNARY(tan) MSL_UNARY(asin) MSL_UNARY(acos)               \
  MSL_UNARY(atan) MSL_UNARY(sinh) MSL_UNARY(cosh) MSL_UNARY(floor) MSL_UNARY(ceil)           \
  MSL_UNARY(round) MSL_UNARY(rint) MSL_UNARY(trunc) MSL_UNARY(fract) MSL_UNARY(log1p)        \
  MSL_UNARY(expm1) MSL_UNARY(erf) MSL_UNARY(saturate) MSL_UNARY(sign)                        \
  MSL_BINARY(pow) MSL_BINARY(powr) MSL_BINARY(fmax) MSL_BINARY(fmin) MSL_BINARY(fmod)        \
  MSL_BINARY(atan2) MSL_BINARY(copysign) MSL_BINARY(step)                                    \
  MSL_TERNARY(fma) MSL_TERNARY(mix)
MSL_MATH
namespace fast { MSL_MATH MSL_BINARY(max) MSL_BINARY(min) MSL_TERNARY(clamp) }
namespace precise { MSL_MATH MSL_BINARY(max) MSL_BINARY(min) MSL_TERNARY(clamp) }
#undef MSL_MATH

#define MSL_MINMAX(T)                                                                        \
  T max(T x, T y);                                                                           \
  T min(T x, T y);                                                                           \
  T clamp(T x, T lo, T hi);                                                                  \
  T abs(T x);
MSL_MINMAX(float) MSL_MINMAX(msl_half_t) MSL_MINMAX(bfloat) MSL_MINMAX(int) MSL_MINMAX(uint)
MSL_MINMAX(short) MSL_MINMAX(ushort) MSL_MINMAX(char) MSL_MINMAX(uchar) MSL_MINMAX(long)
MSL_MINMAX(ulong)
#undef MSL_MINMAX
template <class T, int N> vec<T, N> max(vec<T, N> x, vec<T, N> y);
template <class T, int N> vec<T, N> min(vec<T, N> x, vec<T, N> y);
template <class T, int N> vec<T, N> max(vec<T, N> x, T y);
template <class T, int N> vec<T, N> min(vec<T, N> x, T y);
template <class T, int N> vec<T, N> clamp(vec<T, N> x, vec<T, N> lo, vec<T, N> hi);
template <class T, int N> vec<T, N> clamp(vec<T, N> x, T lo, T hi);
template <class T, int N> vec<T, N> abs(vec<T, N> x);
template <class T, int N> T dot(vec<T, N> x, vec<T, N> y);
template <class T, int N> T length(vec<T, N> x);
template <class T, int N> vec<T, N> normalize(vec<T, N> x);
template <class T> T select(T a, T b, bool c);
template <class T, int N, class C> vec<T, N> select(vec<T, N> a, vec<T, N> b, C c);
template <class T, int N> bool all(vec<T, N> c);
template <class T, int N> bool any(vec<T, N> c);
bool isnan(float x);
bool isnan(msl_half_t x);
bool isinf(float x);
bool isinf(msl_half_t x);
bool isfinite(float x);
bool isfinite(msl_half_t x);
bool signbit(float x);
template <class T, int N> vec<msl_bool_elem_t, N> isnan(vec<T, N> x);
template <class T, int N> vec<msl_bool_elem_t, N> isinf(vec<T, N> x);
template <class T, int N> vec<msl_bool_elem_t, N> isfinite(vec<T, N> x);
template <class To, class From> enable_if_t<sizeof(To) == sizeof(From), To> as_type(From x);
uint popcount(uint x);
uint clz(uint x);
uint ctz(uint x);
int mulhi(int x, int y);
uint mulhi(uint x, uint y);

template <class T> struct numeric_limits {
  static constexpr T infinity();
  static constexpr T quiet_NaN();
  static constexpr T max();
  static constexpr T min();
  static constexpr T lowest();
  static constexpr T epsilon();
  static constexpr bool is_signed = true;
  static constexpr int digits = 0;
};

// ---- simdgroup matrices --------------------------------------------------------------------------
template <class T, int R, int C> struct simdgroup_matrix {
  simdgroup_matrix();
  explicit simdgroup_matrix(T diagonal);
  thread vec<T, 2>& thread_elements() thread;
  const thread vec<T, 2>& thread_elements() const thread;
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<msl_half_t, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;
template <class T, int R, int C> simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T v);
#define MSL_SIMDGROUP_MEMORY(AS)                                                                     \
  template <class T, class U, int R, int C>                                                          \
  void simdgroup_load(thread simdgroup_matrix<T, R, C>& d, const AS U* src, ulong elements_per_row = C, \
                      ulong2 origin = ulong2(0), bool transpose = false);                            \
  template <class T, class U, int R, int C>                                                          \
  void simdgroup_store(thread const simdgroup_matrix<T, R, C>& s, AS U* dst, ulong elements_per_row = C, \
                       ulong2 origin = ulong2(0), bool transpose = false);
MSL_SIMDGROUP_MEMORY(device)
#ifdef __OPENCL_CPP_VERSION__
MSL_SIMDGROUP_MEMORY(threadgroup)
#endif
#undef MSL_SIMDGROUP_MEMORY
template <class T, class U, class V, int N>
void simdgroup_multiply_accumulate(thread simdgroup_matrix<T, N, N>& d, thread const simdgroup_matrix<U, N, N>& a,
                                   thread const simdgroup_matrix<V, N, N>& b, thread const simdgroup_matrix<T, N, N>& c);
template <class T, class U, class V, int N>
void simdgroup_multiply(thread simdgroup_matrix<T, N, N>& d, thread const simdgroup_matrix<U, N, N>& a,
                        thread const simdgroup_matrix<V, N, N>& b);

// ---- atomics (device and threadgroup) ------------------------------------------------------------
enum memory_order { memory_order_relaxed = 0 };
template <class T> struct msl_atomic { T value; };
typedef msl_atomic<int> atomic_int;
typedef msl_atomic<uint> atomic_uint;
typedef msl_atomic<float> atomic_float;
template <class T> using atomic = msl_atomic<T>;
#define MSL_ATOMICS(AS)                                                                             \
  template <class T> T atomic_load_explicit(const AS msl_atomic<T>* a, memory_order o);              \
  template <class T> void atomic_store_explicit(AS msl_atomic<T>* a, T v, memory_order o);           \
  template <class T> T atomic_fetch_add_explicit(AS msl_atomic<T>* a, T v, memory_order o);          \
  template <class T> T atomic_fetch_sub_explicit(AS msl_atomic<T>* a, T v, memory_order o);          \
  template <class T> T atomic_fetch_max_explicit(AS msl_atomic<T>* a, T v, memory_order o);          \
  template <class T> T atomic_fetch_min_explicit(AS msl_atomic<T>* a, T v, memory_order o);          \
  template <class T> T atomic_exchange_explicit(AS msl_atomic<T>* a, T v, memory_order o);           \
  template <class T> bool atomic_compare_exchange_weak_explicit(AS msl_atomic<T>* a, thread T* e, T v, \
                                                                memory_order s, memory_order f);
MSL_ATOMICS(device)
#ifdef __OPENCL_CPP_VERSION__
MSL_ATOMICS(threadgroup)
#endif
#undef MSL_ATOMICS

}  // namespace metal
