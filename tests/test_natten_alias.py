"""``import natten`` served by natten_mps: install/uninstall, version-true layouts, metadata, one copy
of every module, refusal to shadow an imported genuine NATTEN, the runner and the PYTHONPATH entry."""
import importlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

import natten_mps
from natten_mps.compat import _context, releases
from natten_mps.natten_alias import ENV_VAR, NattenAliasFinder, installed_natten_alias, path_entry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSIONS = ["0.14", "0.15", "0.17", "0.17.1", "0.20", "0.21"]

# Top-level names of upstream releases, from their natten/__init__.py (__all__ or imports).
UPSTREAM_TOP = {
    "0.14": {"NeighborhoodAttention1D", "NeighborhoodAttention2D"},
    "0.15": {"NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D", "disable_gemm_na",
             "disable_tf32", "disable_tiled_na", "enable_gemm_na", "enable_tf32", "enable_tiled_na", "has_bfloat",
             "has_cuda", "has_gemm", "has_half", "has_tf32_gemm", "has_fp32_gemm", "has_fp64_gemm"},
    "0.17": {"NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
             "are_deterministic_algorithms_enabled", "use_deterministic_algorithms", "use_kv_parallelism_in_fused_na",
             "is_kv_parallelism_in_fused_na_enabled", "use_fna", "is_fna_enabled", "use_fused_na",
             "is_fused_na_enabled", "use_autotuner", "force_flex_attention", "disable_autotuner",
             "is_autotuner_enabled", "is_autotuner_enabled_for_forward", "is_autotuner_enabled_for_backward",
             "is_autotuner_thorough_for_forward", "is_autotuner_thorough_for_backward", "has_cuda", "has_half",
             "has_bfloat", "has_gemm", "has_fna", "has_fused_na", "has_tf32_gemm", "has_fp32_gemm", "has_fp64_gemm",
             "use_tf32_in_gemm_na", "use_tiled_na", "use_gemm_na", "use_flex_attention", "is_tf32_in_gemm_na_enabled",
             "is_tiled_na_enabled", "is_gemm_na_enabled", "set_memory_usage_preference",
             "get_memory_usage_preference", "is_memory_usage_default", "is_memory_usage_strict",
             "is_memory_usage_unrestricted", "enable_tf32", "disable_tf32", "enable_gemm_na", "disable_gemm_na",
             "enable_tiled_na", "disable_tiled_na"},
}


@pytest.fixture
def alias():
    """Install for the test (replace=True: a genuine natten imported elsewhere is set aside), then
    remove and reset the recorded context settings."""
    yield lambda version=None, **kw: natten_mps.install_as_natten(version, **{"replace": True, **kw})
    natten_mps.uninstall_natten_alias()
    _context.reset()


def _public(module):
    return {n for n in vars(module) if not n.startswith("_")} | ({"__version__"} & set(vars(module)))


@pytest.mark.parametrize("version", VERSIONS)
def test_layout_is_the_releases(alias, version):
    finder = alias(version)
    rel = finder.release
    natten = importlib.import_module("natten")
    assert natten.__version__ == rel.version == releases.release(version).version
    assert natten.__spec__.loader is finder and getattr(natten, "__file__", None) is None
    for sub in rel.modules:
        mod = importlib.import_module("natten" + (f".{sub}" if sub else ""))
        expected = {name for _, name in releases.names(rel, sub)}
        children = {m.split(".")[0] for m in rel.modules if sub == "" and m and "." not in m} if sub == "" else set()
        loaded = {n for n in _public(mod) if isinstance(getattr(mod, n), types.ModuleType)}
        assert _public(mod) - loaded - {"__version__"} == expected, sub
        assert loaded <= children | {"log"}, (sub, loaded)
        for backing, name in releases.names(rel, sub):
            assert getattr(mod, name) is getattr(importlib.import_module(backing), name)
    if rel.line in UPSTREAM_TOP:
        assert set(natten.__all__) - {"__version__"} == UPSTREAM_TOP[rel.line]


def test_layout_matches_installed_upstream_021(alias):
    """Every name of genuine NATTEN 0.21's top level (its __all__) and functional is served."""
    spec = importlib.util.find_spec("natten")
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        pytest.skip("upstream natten is not installed")
    genuine = importlib.import_module("natten")
    if not genuine.__version__.startswith("0.21"):
        pytest.skip(f"needs upstream NATTEN 0.21, found {genuine.__version__}")
    top = set(genuine.__all__)
    fn = {"na1d", "na2d", "na3d", "attention", "merge_attentions"}
    assert fn <= set(vars(importlib.import_module("natten.functional")))
    alias("0.21")
    natten = importlib.import_module("natten")
    assert natten is not genuine and top <= set(vars(natten))
    assert fn <= set(vars(importlib.import_module("natten.functional")))


def test_bare_import_loads_what_upstream_loaded(alias):
    """Code that does ``import natten`` then ``natten.functional.na2d`` (k-diffusion) works."""
    alias("0.17")
    natten = importlib.import_module("natten")
    assert isinstance(natten.functional, types.ModuleType) and isinstance(natten.context, types.ModuleType)
    assert "natten.natten2d" not in sys.modules and "natten.flops" not in sys.modules
    importlib.import_module("natten.natten2d")
    assert sys.modules["natten.natten2d"].NeighborhoodAttention2D is natten.NeighborhoodAttention2D


def test_metadata_and_find_spec(alias):
    alias("0.15")
    assert importlib.metadata.version("natten") == "0.15.1"
    dist = importlib.metadata.distribution("natten")
    assert dist.metadata["Name"] == "natten" and dist.files is None
    spec = importlib.util.find_spec("natten")
    assert isinstance(spec.loader, NattenAliasFinder) and "natten_mps" in spec.origin
    assert importlib.util.find_spec("natten.functional") is not None
    assert importlib.util.find_spec("natten.context") is None            # 0.15 had no natten.context
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("natten.context")


def test_one_copy_of_every_module(alias):
    """The alias modules are namespaces without files; no file of this package is loaded twice."""
    package_dir = os.path.realpath(os.path.dirname(natten_mps.__file__))
    for version in VERSIONS:
        rel = alias(version).release
        for sub in rel.modules:
            importlib.import_module("natten" + (f".{sub}" if sub else ""))
        files = {}
        for name, mod in list(sys.modules.items()):
            f = getattr(mod, "__file__", None)
            if f and os.path.realpath(f).startswith(package_dir):
                files.setdefault(os.path.realpath(f), []).append(name)
            if name == "natten" or name.startswith("natten."):
                assert f is None, name
        assert {k: v for k, v in files.items() if len(v) > 1} == {}
        runtime = os.path.realpath(sys.modules["natten_mps.metal.runtime"].__file__)
        assert files[runtime] == ["natten_mps.metal.runtime"]
        natten_mps.uninstall_natten_alias()


def test_refuses_to_shadow_an_imported_genuine_natten(monkeypatch):
    natten_mps.uninstall_natten_alias()
    fake = types.ModuleType("natten")
    fake.__file__, fake.__version__ = "/site-packages/natten/__init__.py", "0.21.7"
    sub = types.ModuleType("natten.functional")
    for name in [n for n in sys.modules if n == "natten" or n.startswith("natten.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "natten", fake)
    monkeypatch.setitem(sys.modules, "natten.functional", sub)
    with pytest.raises(RuntimeError, match="genuine NATTEN 0.21.7 is already imported .*pip uninstall natten.*"
                                           "replace=True"):
        natten_mps.install_as_natten("0.17")
    assert installed_natten_alias() is None and sys.modules["natten"] is fake
    try:
        natten_mps.install_as_natten("0.17", replace=True)
        assert importlib.import_module("natten").__version__ == "0.17.5"
        natten_mps.install_as_natten("0.14")                      # switching keeps what was set aside
        assert importlib.import_module("natten").__version__ == "0.14.6"
    finally:
        assert natten_mps.uninstall_natten_alias() is True
    assert sys.modules["natten"] is fake and sys.modules["natten.functional"] is sub
    assert natten_mps.uninstall_natten_alias() is False


def test_install_is_idempotent_and_checks_arguments(alias):
    a = alias("0.17")
    assert alias("0.17") is a and sys.meta_path[0] is a
    assert sum(isinstance(f, NattenAliasFinder) for f in sys.meta_path) == 1
    assert alias().release.version == releases.LINES[releases.DEFAULT_VERSION]
    for bad in ("0.16", "0.19.0", "latest", "1.0"):
        with pytest.raises(ValueError, match="NATTEN release line this package serves"):
            natten_mps.install_as_natten(bad)
    with pytest.raises(TypeError, match="version must be a str"):
        natten_mps.install_as_natten(0.17)


def test_missing_names_say_which_release_had_them(alias):
    alias("0.21")
    natten = importlib.import_module("natten")
    with pytest.raises(AttributeError, match=r"no attribute 'na2d_qk'; it is in NATTEN 0.15, 0.17"):
        natten.functional.na2d_qk
    with pytest.raises(AttributeError, match=r"'natten2dqkrpb'; it is in NATTEN 0.14, 0.15, 0.17.0-0.17.4"):
        natten.functional.natten2dqkrpb
    with pytest.raises(ImportError):
        from natten.functional import na2d_qk  # noqa: F401


def test_probes_answer_for_this_package(alias):
    alias("0.17")
    natten = importlib.import_module("natten")
    assert natten.has_fused_na() is True and natten.has_fna() is True
    assert natten.has_half() is True and natten.has_bfloat() is True and natten.has_gemm() is False
    assert natten.has_cuda() is torch.cuda.is_available()
    assert hasattr(natten, "context")            # NAT's "is_natten_post_017" probe
    alias("0.15")
    natten = importlib.import_module("natten")
    assert natten.functional.has_half() is True and not hasattr(natten, "has_fused_na")
    assert not hasattr(natten, "context")
    alias("0.21")
    natten = importlib.import_module("natten")
    assert natten.HAS_LIBNATTEN is True and natten.get_configs_for_cutlass_fna() == []


def test_context_settings_are_recorded(alias, monkeypatch):
    alias("0.17")
    natten = importlib.import_module("natten")
    assert natten.is_fused_na_enabled() and not natten.is_kv_parallelism_in_fused_na_enabled()
    natten.use_autotuner(forward_pass=True)
    assert natten.is_autotuner_enabled() and natten.is_autotuner_enabled_for_forward()
    natten.set_memory_usage_preference("strict")
    assert natten.is_memory_usage_strict() and natten.context.get_memory_usage_preference().name == "Strict"
    with pytest.raises(ValueError, match="pref must be one of"):
        natten.set_memory_usage_preference("low")
    natten.use_deterministic_algorithms(True)
    with pytest.raises(RuntimeError, match="deterministic mode"):
        natten.use_kv_parallelism_in_fused_na(True)
    natten.use_deterministic_algorithms(False)
    # use_fused_na(False): 0.17's modules take their split path, as 0.17 did
    calls = []
    real = natten_mps.functional.na2d
    monkeypatch.setattr(natten_mps.functional, "na2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    m = natten.NeighborhoodAttention2D(8, 2, 3).double()
    x = torch.randn(1, 5, 5, 8, dtype=torch.float64)
    y = m(x)
    assert calls == [1]
    natten.use_fused_na(False)
    assert not natten.is_fused_na_enabled()
    torch.testing.assert_close(m(x), y)
    assert calls == [1]


def _run(args, cwd, env_extra=None, timeout=150):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATTEN_MPS_")}
    env["PYTHONPATH"] = ROOT
    env.update(env_extra or {})
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


PROGRAM = """
import importlib.metadata, json, multiprocessing, os, sys
import natten
from natten.functional import {probe}


def child(_):
    import natten
    return natten.__version__


if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        spawned = pool.map(child, [0])[0]
    print(json.dumps({{"argv": sys.argv, "name": __name__, "version": natten.__version__,
                      "metadata": importlib.metadata.version("natten"), "spawned": spawned,
                      "path0": sys.path[0], "env": os.environ.get("{env}")}}))
"""


def test_runner_runs_a_script_and_its_spawned_workers(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(PROGRAM.format(probe="natten2dqkrpb", env=ENV_VAR))
    out = _run(["-m", "natten_mps.as_natten", "--natten-version", "0.14", str(script), "--lr", "3"], cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"argv": [str(script), "--lr", "3"], "name": "__main__", "version": "0.14.6",
                   "metadata": "0.14.6", "spawned": "0.14.6", "path0": str(tmp_path), "env": "0.14"}


def test_runner_runs_a_module_with_the_environment_default(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(PROGRAM.replace("multiprocessing.get_context(\"spawn\").Pool(1)",
                                                               "multiprocessing.get_context(\"fork\").Pool(1)")
                                               .format(probe="na2d_qk", env=ENV_VAR))
    out = _run(["-m", "natten_mps.as_natten", "-m", "pkg.train", "x"], cwd=tmp_path, env_extra={ENV_VAR: "0.17.1"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["argv"][1:] == ["x"] and got["argv"][0].endswith(os.path.join("pkg", "train.py"))
    assert got["name"] == "__main__" and got["version"] == got["spawned"] == "0.17.1"
    assert got["path0"] == str(tmp_path)


def test_runner_refuses_bad_arguments_and_prints_the_environment(capsys):
    from natten_mps import as_natten
    assert as_natten.main(["--natten-version", "0.16", "x.py"]) == 2
    err = capsys.readouterr().err
    assert "NATTEN release line this package serves" in err and "usage:" in err
    assert as_natten.main([]) == 2 and "nothing to run" in capsys.readouterr().err
    assert as_natten.main(["--natten-version"]) == 2 and "needs a value" in capsys.readouterr().err
    assert as_natten.main(["--fast", "x.py"]) == 2 and "unknown option '--fast'" in capsys.readouterr().err
    assert installed_natten_alias() is None
    assert as_natten.main(["--print-env", "--natten-version=0.20"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"export {ENV_VAR}=0.20", f"export PYTHONPATH={path_entry()}${{PYTHONPATH:+:$PYTHONPATH}}"]


def test_path_entry_serves_an_unmodified_interpreter(tmp_path):
    code = textwrap.dedent("""
        import importlib.util, importlib.metadata
        assert importlib.util.find_spec("natten") is not None
        import natten
        from natten.functional import natten1dqkrpb
        import natten_mps.compat.v014.functional as f
        assert natten1dqkrpb is f.natten1dqkrpb
        print(natten.__version__, importlib.metadata.version("natten"), natten.__spec__.origin)
    """)
    out = _run(["-c", code], cwd=tmp_path, env_extra={"PYTHONPATH": path_entry() + os.pathsep + ROOT,
                                                      ENV_VAR: "0.14"}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["0.14.6", "0.14.6", "natten_mps", "alias", "of", "NATTEN", "0.14.6"]


def test_runner_runs_code_given_with_c(monkeypatch, capsys):
    from natten_mps import as_natten
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setenv(ENV_VAR, "0.14")          # restored afterwards; --natten-version wins
    try:
        code = "import sys, natten; print(natten.__version__, sys.argv, __name__)"
        assert as_natten.main(["--natten-version", "0.20", "--replace", "-c", code, "a"]) == 0
        assert capsys.readouterr().out.split() == ["0.20.1", "['-c',", "'a']", "__main__"]
        assert os.environ[ENV_VAR] == "0.20" and os.environ["PYTHONPATH"] == path_entry()
        assert sys.path[0] == "" and sys.path[1] == path_entry()
    finally:
        natten_mps.uninstall_natten_alias()
