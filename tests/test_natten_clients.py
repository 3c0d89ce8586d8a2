"""Real models written against upstream NATTEN 0.14 / 0.15 / 0.17 / 0.20 / 0.21, run unmodified through
the ``natten`` alias (``install_as_natten`` in-process, ``python -m natten_mps.as_natten`` in a
subprocess), forward and backward, against the float64 brute force (tests/clients/checks.py) and,
forward, against upstream NATTEN 0.21's CPU path where the model's call exists there.

Vendored model code: tests/clients/<model>/ (LICENSE and ORIGIN.md in each). k-diffusion, NAF and
natten-fwd-ad need ``einops``; their tests skip without it.
"""
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import natten_mps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = os.path.join(ROOT, "tests", "clients")
sys.path.insert(0, CLIENTS)
import checks  # noqa: E402

HAS_EINOPS = importlib.util.find_spec("einops") is not None
NEEDS_EINOPS = {"k_diffusion", "naf", "natten_fwd_ad"}
TOL = 1e-10


def _need(model):
    if model in NEEDS_EINOPS and not HAS_EINOPS:
        pytest.skip(f"the vendored {model} code needs einops (pip install einops)")


@pytest.fixture
def serve():
    """install_as_natten(version, replace=True) for the test (a genuine natten imported by another
    test is set aside and put back)."""
    yield lambda version: natten_mps.install_as_natten(version, replace=True)
    natten_mps.uninstall_natten_alias()


def _assert_small(result, tol=TOL):
    assert result["out"] <= tol * max(1.0, result["out_scale"]), result
    assert result["grad"] <= 10 * tol * max(1.0, result["out_scale"]), result


@pytest.mark.parametrize("model,version", [
    ("allin1", "0.14"), ("allin1", "0.15"), ("allin1", "0.17.1"),
    ("k_diffusion", "0.17"), ("naf", "0.21"), ("naf", "0.20"), ("naf", "0.17"),
    ("natten_fwd_ad", "0.17"), ("natten_fwd_ad", "0.15")])
def test_client_through_install_as_natten(serve, model, version):
    _need(model)
    serve(version)
    _assert_small(checks.CHECKS[model](version))


def test_k_diffusion_split_path(serve):
    """With has_fused_na() answering False the model takes 0.17's heads-first split ops: the layout
    the 0.21-API ``compat.v017.functional`` used to get wrong."""
    _need("k_diffusion")
    serve("0.17.1")
    _assert_small(checks.check_k_diffusion("0.17.1", fused=False))


def test_clients_fail_where_upstream_would(serve):
    """Version-true namespaces: all-in-one's 0.14 functions are gone in 0.17.5 (ImportError, as with
    upstream 0.17.5); k-diffusion's has_fused_na() probe is gone in 0.21 (AttributeError naming the
    releases that had it)."""
    serve("0.17")
    with pytest.raises(ImportError, match="natten1dav"):
        checks.check_allin1("0.17")
    if HAS_EINOPS:
        serve("0.21")
        with pytest.raises(AttributeError, match="has no attribute 'has_fused_na'; it is in NATTEN 0.17"):
            checks.check_k_diffusion("0.21")


@pytest.mark.parametrize("model,version", [("allin1", "0.14"), ("k_diffusion", "0.17"), ("naf", "0.21"),
                                           ("natten_fwd_ad", "0.15")])
def test_client_through_runner(model, version):
    _need(model)
    script = os.path.join(CLIENTS, "run_client.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATTEN_MPS_")}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-m", "natten_mps.as_natten", "--natten-version", version, script, model],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["version"] == natten_mps.compat.releases.release(version).version
    assert result["argv"] == [script, model] and result["name"] == "__main__"
    _assert_small(result)


def test_clients_on_the_metal_path(serve, emulate):
    """The clients' calls reach the Metal kernels (CPU emulator): all-in-one's 0.14 QK+RPB/AV (split
    kernels) and NAF's 0.21 fused na2d, float32 against the float64 brute force."""
    serve("0.14")
    _assert_small(checks.check_allin1("0.14", dtype=torch.float32), tol=2e-5)
    assert natten_mps.last_backend() == "metal"
    if HAS_EINOPS:
        serve("0.21")
        _assert_small(checks.check_naf("0.21", dtype=torch.float32), tol=2e-5)
        assert natten_mps.last_backend() == "metal"


@pytest.mark.parametrize("model", ["k_diffusion", "naf"])
def test_clients_match_upstream_natten_021_cpu(serve, model):
    """Forward against genuine NATTEN 0.21.7's CPU path (flex; no CPU backward there): k-diffusion's
    fused call ``natten.functional.na2d(q, k, v, kernel_size, scale=1.0)`` and NAF's 0.21 call."""
    _need(model)
    spec = importlib.util.find_spec("natten")
    if spec is None or not os.path.isfile(spec.origin or ""):
        pytest.skip("upstream natten is not installed")
    import natten  # noqa: F401  (the genuine one; serve() sets it aside)
    if not natten.__version__.startswith("0.21"):
        pytest.skip(f"needs upstream NATTEN 0.21, found {natten.__version__}")
    serve("0.17" if model == "k_diffusion" else "0.21")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = checks.CHECKS[model]("0.17" if model == "k_diffusion" else "0.21", upstream=True)
    assert result["out"] <= 2e-5 * max(1.0, result["out_scale"]), result
