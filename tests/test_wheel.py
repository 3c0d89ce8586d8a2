"""The distributions are complete: the wheel carries the shaders, the license and the metadata a package
index shows; the sdist carries everything the README and docs/ link to. Built offline (no build isolation)."""
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _version():
    return re.search(r'__version__ = "([^"]+)"', (ROOT / "natten_mps" / "version.py").read_text()).group(1)


def _relative_links(md_path):
    """Relative link targets of a markdown file, as repository paths (URLs and anchors dropped)."""
    out = []
    for target in LINK.findall(md_path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = (PurePosixPath(md_path.relative_to(ROOT).parent.as_posix()) / target).as_posix()
        parts = []
        for piece in path.split("/"):
            if piece == "..":
                parts.pop()
            elif piece not in ("", "."):
                parts.append(piece)
        out.append("/".join(parts))
    return out


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dists")
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "wheel"), str(ROOT)], capture_output=True, text=True)
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    sdist = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp),
                            "sdist", "-d", str(tmp / "sdist")], capture_output=True, text=True, cwd=ROOT)
    assert sdist.returncode == 0, sdist.stderr[-3000:]
    wheels = list((tmp / "wheel").glob("*.whl"))
    sdists = list((tmp / "sdist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, (wheels, sdists)
    return wheels[0], sdists[0]


def test_wheel_holds_shaders_license_and_metadata(dists):
    wheel, _ = dists
    assert wheel.name.startswith(f"natten_mps_kernels-{_version()}-py3-none-any")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        shaders = sorted(p.relative_to(ROOT / "shaders").as_posix() for p in (ROOT / "shaders").rglob("*")
                         if p.suffix in (".metal", ".h"))
        assert shaders and all(f"natten_mps/_shaders/{s}" in names for s in shaders), shaders
        assert "natten_mps/metal/emulator_shim/metal_common.h" in names
        assert any(n.startswith("sage_mps/") for n in names)
        info = f"natten_mps_kernels-{_version()}.dist-info"
        assert any(n.startswith(info) and n.endswith("LICENSE") for n in names), sorted(names)[-8:]
        meta = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
    assert meta["Version"] == _version()
    assert "MIT" in (meta.get("License-Expression") or meta.get("License") or "")
    classifiers = meta.get_all("Classifier")
    assert "Operating System :: MacOS" in classifiers
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)
    assert "Requires-Dist: torch>=2.8" in str(meta) or any("torch>=2.8" in r for r in meta.get_all("Requires-Dist"))
    assert meta["Keywords"] and "neighborhood attention" in meta["Keywords"]


def test_sdist_holds_every_file_the_readme_and_docs_link(dists):
    _, sdist = dists
    with tarfile.open(sdist) as tf:
        prefix = f"natten_mps_kernels-{_version()}/"
        names = {n[len(prefix):] for n in tf.getnames() if n.startswith(prefix)}
    sources = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    links = {(src.name, t) for src in sources for t in _relative_links(src)}
    assert any(t.startswith("docs/") for _, t in links), "the README links no docs page"
    dirs = {str(PurePosixPath(n).parent) for n in names}
    missing = sorted((src, t) for src, t in links if t.rstrip("/") not in names and t.rstrip("/") not in dirs)
    assert not missing, missing
    for needed in ("LICENSE", "CHANGELOG.md", "docs/api.md", "shaders/natten/attention.metal", "setup.py"):
        assert needed in names, needed


def test_changelog_names_the_current_version():
    head = re.search(r"^## \[?([0-9][^\]\s]*)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert head and head.group(1) == _version(), (head and head.group(1), _version())
