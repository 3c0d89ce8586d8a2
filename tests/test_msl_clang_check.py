"""The compiler-grade MSL check (natten_mps/metal/clang_check.py, docs/msl-check.md).

Every shader under shaders/ (found by glob, with every template instantiation) passes; a planted mistake
of each rule is reported with its file and line, among them mistakes that g++ (the emulator) and nvcc
(the CUDA translation) accept; a real-world MSL source that compiles on Macs raises no alarm.
"""
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from natten_mps.metal import clang_check, cuda, emulator, runtime

ROOT = Path(__file__).resolve().parent.parent
SHADERS = sorted((ROOT / "shaders").rglob("*.metal"))

HEAD = "#include <metal_stdlib>\nusing namespace metal;\n"

# name -> (source, fragment of the expected message); the mistake is on the line marked `// <-`.
PLANTED = {
    # Address spaces are disjoint.
    "threadgroup_to_device_pointer": ("""
kernel void k_tg_to_device(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  threadgroup float stage[32];
  stage[tid] = 1.0f;
  device float* p = stage;  // <-
  out[tid] = p[0];
}""", "device float *"),
    "device_pointer_to_thread_parameter": ("""
inline float first_of(thread const float* x) { return x[0]; }
kernel void k_dev_to_thread(device const float* a [[buffer(0)]], device float* out [[buffer(1)]],
                            uint gid [[thread_position_in_grid]]) {
  out[gid] = first_of(a + gid);  // <-
}""", "first_of"),
    "thread_reference_to_device_memory": ("""
kernel void k_ref(device float* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  thread float& r = out[gid];  // <-
  r = 1.0f;
}""", "changes address space"),
    "write_through_constant": ("""
kernel void k_const_write(device float* out [[buffer(0)]], constant int* geom [[buffer(1)]],
                          uint gid [[thread_position_in_grid]]) {
  geom[0] = 1;  // <-
  out[gid] = float(geom[1]);
}""", "not assignable"),
    # Scopes.
    "threadgroup_variable_outside_kernel": ("""
inline float helper_tg(uint tid) {
  threadgroup float scratch[32];  // <-
  scratch[tid] = 1.0f;
  return scratch[0];
}
kernel void k_tg_helper(device float* out [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
  out[tid] = helper_tg(tid);
}""", "only in kernel functions"),
    "program_scope_variable_not_constant": ("""
constexpr int kTileWidth = 4;  // <-
kernel void k_prog(device float* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  out[gid] = float(kTileWidth);
}""", "constant address space"),
    "pointer_without_address_space": ("""
inline float sum2(const float* x) { return x[0] + x[1]; }  // <-
kernel void k_noas(device float* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  float t[2] = {1.0f, 2.0f};
  out[gid] = sum2(t);
}""", "without an address space"),
    "reference_without_address_space": ("""
struct Box { int lo; int hi; };
inline int width(const Box& b) { return b.hi - b.lo; }  // <-
kernel void k_noas_ref(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  Box b;
  b.lo = 0; b.hi = int(gid);
  out[gid] = width(b);
}""", "without an address space"),
    # Vector conversions and constructors.
    "implicit_vector_conversion": ("""
kernel void k_vec_conv(device half* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  float4 f = float4(1.0f);
  half4 h = f;  // <-
  out[gid] = h.x;
}""", "cannot initialize"),
    "vector_constructor_components": ("""
kernel void k_vec_ctor(device float* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  float4 f = float4(1.0f, 2.0f);  // <-
  out[gid] = f.x;
}""", "vector constructor"),
    "vector_constructor_truncation": ("""
kernel void k_vec_trunc(device float* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  float4 f = float4(1.0f);
  float2 g = float2(f);  // <-
  out[gid] = g.x;
}""", "vector constructor"),
    # Kernel signatures.
    "kernel_returns_a_value": ("""
kernel int k_ret(device float* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {  // <-
  out[gid] = 0.0f;
  return 0;
}""", "must return void"),
    "buffer_passed_by_value": ("""
kernel void k_byval(device float* out [[buffer(0)]], float scale [[buffer(1)]],  // <-
                    uint gid [[thread_position_in_grid]]) {
  out[gid] = scale;
}""", "[[buffer(n)]] parameter 'scale'"),
    "buffer_in_thread_memory": ("""
kernel void k_thread_buf(thread float* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {  // <-
  out[gid] = 0.0f;
}""", "device or constant memory"),
    "thread_position_signed": ("""
kernel void k_pos_int(device float* out [[buffer(0)]], int gid [[thread_position_in_grid]]) {  // <-
  out[gid] = 0.0f;
}""", "uint or ushort"),
    "thread_index_as_vector": ("""
kernel void k_idx_vec(device float* out [[buffer(0)]], uint2 tid [[thread_index_in_threadgroup]]) {  // <-
  out[tid.x] = 0.0f;
}""", "uint or ushort"),
    # C++17 constructs (Metal is based on C++14).
    "cpp17_if_constexpr": ("""
template <int N> inline int twice() {
  if constexpr (N > 2) { return 2 * N; }  // <-
  return N;
}
kernel void k_ifc(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) { out[gid] = twice<3>(); }""",
                           "C++14"),
    "cpp17_structured_binding": ("""
struct Pair { int a; int b; };
kernel void k_sb(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  Pair p = {1, 2};
  auto [x, y] = p;  // <-
  out[gid] = x + y;
}""", "C++14"),
    "cpp17_fold_expression": ("""
template <typename... A> inline int total(A... a) { return (a + ...); }  // <-
kernel void k_fold(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) { out[gid] = total(1, 2); }""",
                              "C++14"),
    "cpp17_nested_namespace": ("""
namespace tiles::detail { inline int one() { return 1; } }  // <-
kernel void k_ns(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) { out[gid] = tiles::detail::one(); }""",
                               "C++14"),
    "cpp17_static_assert_without_message": ("""
kernel void k_sa(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  static_assert(sizeof(int) == 4);  // <-
  out[gid] = 0;
}""", "C++14"),
    "cpp17_auto_template_parameter": ("""
template <auto N> inline int value_of() { return int(N); }  // <-
kernel void k_auto(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) { out[gid] = value_of<3>(); }""",
                                      "C++14"),
    "cpp17_nodiscard": ("""
[[nodiscard]] inline int answer() { return 42; }  // <-
kernel void k_nd(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) { out[gid] = answer(); }""",
                        "C++14"),
    "cpp17_class_template_argument_deduction": ("""
template <typename T> struct Holder { T v; Holder(T x) : v(x) {} };
kernel void k_ctad(device int* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  Holder h(3);  // <-
  out[gid] = h.v;
}""", "C++14"),
    # A mistake in one template instantiation only (T = float; the half one is correct).
    "error_in_one_instantiation": ("""
template <typename T>
kernel void k_inst(device T* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
  half4 h = vec<T, 4>(out[gid]);  // <-
  out[gid] = T(h.x);
}
template [[host_name("k_inst_half")]] kernel void k_inst<half>(device half*, uint);
template [[host_name("k_inst_float")]] kernel void k_inst<float>(device float*, uint);""", "cannot initialize"),
}

# Planted mistakes the other toolchains accept (measured: docs/msl-check.md); the tests below compile
# them, so the claim stays true.
ACCEPTED_BY_GXX = ["threadgroup_to_device_pointer", "write_through_constant", "threadgroup_variable_outside_kernel",
                   "program_scope_variable_not_constant", "pointer_without_address_space",
                   "reference_without_address_space", "vector_constructor_components", "kernel_returns_a_value",
                   "thread_position_signed", "thread_index_as_vector"] + [k for k in PLANTED if k.startswith("cpp17")]
ACCEPTED_BY_NVCC = ["threadgroup_to_device_pointer", "device_pointer_to_thread_parameter",
                    "thread_reference_to_device_memory", "threadgroup_variable_outside_kernel",
                    "program_scope_variable_not_constant", "pointer_without_address_space",
                    "reference_without_address_space", "vector_constructor_components", "kernel_returns_a_value",
                    "thread_position_signed", "thread_index_as_vector"] + [k for k in PLANTED if k.startswith("cpp17")]

needs_nvcc = pytest.mark.skipif(not cuda.nvcc_available(), reason="needs nvcc")


def _marked_line(src: str) -> int:
    return next(i + 1 for i, line in enumerate(src.split("\n")) if "// <-" in line)


@pytest.mark.parametrize("path", SHADERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shader_passes_clang_check(path):
    problems = clang_check.check_file(path, ROOT / "shaders")
    assert problems == [], "\n".join(f"{f}:{line}: {msg}" for f, line, msg in problems)


def test_check_covers_every_metal_file_by_glob():
    assert SHADERS and [p.resolve() for p in clang_check.shader_files()] == [p.resolve() for p in SHADERS]


@pytest.mark.parametrize("path", SHADERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_text_is_the_compiled_text_and_lines_map_back(path):
    """The check parses what compile_shader gets (runtime.shader_source) and maps each line to its file."""
    text, origins = clang_check.inline_includes(path, ROOT / "shaders")
    assert text == runtime.shader_source(str(path.relative_to(ROOT / "shaders")))
    lines = text.split("\n")
    assert len(origins) == len(lines)
    files = {o[0] for o in origins}
    assert str(path.relative_to(ROOT)) in files
    for line, (name, number) in zip(lines, origins):
        source_lines = (ROOT / name).read_text().split("\n")
        if number <= len(source_lines):
            assert line == source_lines[number - 1], (name, number)


@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_mistake_is_reported_with_file_and_line(name):
    src, fragment = PLANTED[name]
    source = HEAD + src
    want = _marked_line(source)
    problems = clang_check.check_source(source, "planted.metal")
    assert any(f == "planted.metal" and line == want and fragment in msg for f, line, msg in problems), problems
    # and nothing on the snippet's correct lines
    assert all(line == want for _, line, _ in problems), problems


def test_mistake_in_an_included_header_names_the_header(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "util.h").write_text("#pragma once\n\ninline float head(const float* x) { return x[0]; }\n")
    (tmp_path / "kernels" / "k.metal").write_text(
        HEAD + '#include "util.h"\n'
        "kernel void k(device float* out [[buffer(0)]], uint gid [[thread_position_in_grid]]) {\n"
        "  thread float t[1] = {1.0f};\n  out[gid] = head(t);\n  float4 v = float4(1.0f, 2.0f, 3.0f);\n}\n")
    problems = clang_check.check_file(tmp_path / "kernels" / "k.metal", tmp_path / "kernels")
    assert ("kernels/util.h", 3) in {(f, line) for f, line, _ in problems}, problems
    assert ("kernels/k.metal", 7) in {(f, line) for f, line, _ in problems}, problems


def test_real_shader_with_a_planted_mistake_is_reported_in_its_header(tmp_path):
    """The shaders are really parsed: one address space dropped from attn_tile.h, which split.metal
    includes, is reported at that header line."""
    shutil.copytree(ROOT / "shaders", tmp_path / "shaders")
    header = tmp_path / "shaders" / "natten" / "attn_tile.h"
    needle = "inline Span key_span(thread const Geom& G"
    text = header.read_text()
    assert needle in text
    at = text[:text.index(needle)].count("\n") + 1
    header.write_text(text.replace(needle, "inline Span key_span(const Geom& G", 1))
    problems = clang_check.check_file(tmp_path / "shaders" / "natten" / "split.metal", tmp_path / "shaders")
    assert any(f == "shaders/natten/attn_tile.h" and line == at and "without an address space" in msg
               for f, line, msg in problems), problems


def test_gxx_accepts_the_planted_mistakes_it_cannot_see():
    """The emulator (g++, C++17) compiles these: only the clang check stands between them and a Mac."""
    source = HEAD + "\n".join(PLANTED[k][0] for k in ACCEPTED_BY_GXX)
    lib = emulator.compile(source, label="planted mistakes")
    assert lib is not None


@needs_nvcc
def test_nvcc_accepts_the_planted_mistakes_it_cannot_see():
    source = HEAD + "\n".join(PLANTED[k][0] for k in ACCEPTED_BY_NVCC)
    assert cuda.check_translation(source, "planted mistakes").exists()


# ------------------------------------------------------------------------------------------------
# Real-world control: natten-mlx's Metal kernels (MIT), compiled into its metallib on macOS by Apple's
# compiler. Their one non-MSL include, MLX's kernels/utils.h, is replaced by the one name they take
# from it (bfloat16_t, MLX's name for MSL's bfloat on Metal >= 3.1).
# ------------------------------------------------------------------------------------------------
CONTROL_STAND_INS = {"mlx/backend/metal/kernels/utils.h": "typedef bfloat bfloat16_t;"}


def _control_files():
    if sys.version_info < (3, 10):
        pytest.skip("natten-mlx (the control) needs Python >= 3.10")
    try:
        dist = metadata.distribution("natten-mlx")
    except metadata.PackageNotFoundError:
        pytest.fail("the control needs natten-mlx: pip install -e '.[test]'")
    files = sorted(Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".metal"))
    assert files, "natten-mlx ships no .metal sources"
    return files


def test_real_world_control_raises_no_alarm():
    files = _control_files()
    assert sum(p.read_text().count("\n") for p in files) > 2000
    problems = []
    for p in files:
        problems += clang_check.check_file(p, stand_ins=CONTROL_STAND_INS)
    assert problems == [], "\n".join(f"{f}:{line}: {msg}" for f, line, msg in problems[:30])


def test_control_with_a_planted_mistake_is_reported(tmp_path):
    """The control is really parsed: one address space dropped from it is reported at its line."""
    src = _control_files()[0].read_text()
    needle = "device const T* key"
    assert needle in src
    at = src[:src.index(needle)].count("\n") + 1
    bad = tmp_path / "control.metal"
    bad.write_text(src.replace(needle, "const T* key", 1))
    problems = clang_check.check_file(bad, stand_ins=CONTROL_STAND_INS)
    assert any(line == at and "without an address space" in msg for _, line, msg in problems), problems


def test_cli_reports_file_and_line_and_exit_status(tmp_path):
    bad = tmp_path / "bad.metal"
    bad.write_text(HEAD + PLANTED["pointer_without_address_space"][0])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "natten_mps.metal.clang_check", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 1, out.stderr
    assert f"bad.metal:{_marked_line(bad.read_text())}:" in out.stdout
    assert clang_check.main([str(ROOT / "shaders" / "natten" / "split.metal")]) == 0
