"""``python -m natten_mps.doctor`` runs here (no MPS: the emulator, tiny shapes) and writes its report."""
import json
import os
import subprocess
import sys
import types

import pytest

from natten_mps import doctor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("doctor")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("NATTEN_MPS_EMULATE_MAX_THREADS", None)
    proc = subprocess.run([sys.executable, "-m", "natten_mps.doctor", "--out", str(out)], capture_output=True,
                          text=True, env=env, cwd=str(out))
    return out, proc


def test_doctor_runs_and_writes_json_and_markdown(report_dir):
    out, proc = report_dir
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    report = json.loads((out / "natten_mps_doctor.json").read_text())
    md = (out / "natten_mps_doctor.md").read_text()
    assert report["ok"] and report["quick"]
    m = report["machine"]
    assert m["torch"] and m["chip"] and m["metal_path"][0] == "cpu" and m["msl_version"]["cpu"] == "3.2"
    # every family: 3 shaders x 3 dtypes, each compiled with every pipeline created
    fams = [r for r in report["families"] if r["device"] == "cpu"]
    assert len(fams) == 9 and all(r["ok"] and r["kernels"] > 0 for r in fams)
    assert {r["shader"] for r in fams} == set(doctor.SHADERS)
    assert all(r["max_threadgroup_bytes"] <= 32768 for r in fams)
    # the parity sweep: every case, every dtype, on the Metal path
    cases = {r["case"] for r in report["parity"]}
    assert len(report["parity"]) == 3 * len(cases) and len(cases) >= 12
    assert all(r["ok"] and r["path"] == "metal" and r["worst"] <= 1 for r in report["parity"])
    assert any("int8" in c for c in cases) and any("varlen" in c for c in cases) and any("qk" in c for c in cases)
    assert sum(r["backward"] for r in report["parity"]) == len(report["parity"]) - 3     # INT8: forward only
    assert report["benchmarks"] == [] and "no MPS" in report["benchmarks_note"]
    assert not report["unavailable"]
    assert f"Parity: {len(report['parity'])} of {len(report['parity'])} cases pass" in md
    assert "## Kernel families" in md and md in proc.stdout


def test_markdown_flags_failures_and_tuner_hook(report_dir, monkeypatch):
    out, _ = report_dir
    report = json.loads((out / "natten_mps_doctor.json").read_text())
    report["parity"][0].update(ok=False, worst=3.5)
    report["families"][1].update(ok=False, error="ShaderCompileError: planted")
    report["unavailable"] = [{"shader": "shaders/natten/attention.metal", "unit": "float16", "stage": "compile",
                              "kernel": "attn_forward_float16*", "error": "planted"}]
    md = doctor.markdown(report)
    assert "FAIL 3.5" in md and "planted" in md and "| NO |" in md
    assert doctor.tuner_report() is None or hasattr(sys.modules.get("natten_mps.tuning"), "report")
    fake = types.ModuleType("natten_mps.tuning")
    fake.report = lambda: {"profile": "planted"}
    monkeypatch.setitem(sys.modules, "natten_mps.tuning", fake)
    import natten_mps
    monkeypatch.setattr(natten_mps, "tuning", fake, raising=False)
    assert doctor.tuner_report() == {"profile": "planted"}
