"""Pure-Python package: natten_mps, sage_mps and the Metal sources under shaders/ (no extension)."""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
SHADER_FILES = sorted(str(p.relative_to(ROOT / "shaders")) for p in (ROOT / "shaders").rglob("*")
                      if p.is_file() and p.suffix in (".metal", ".h", ".md"))

setup(
    name="natten-mps-kernels",
    version="0.1.0",
    description="Neighborhood attention and SageAttention for PyTorch, with Metal kernels on Apple Silicon",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=["natten_mps", "natten_mps.backends", "natten_mps.compat", "natten_mps.extras", "natten_mps.extras.allin1",
              "natten_mps.metal", "natten_mps.utils", "natten_mps._shaders", "sage_mps"],
    # The Metal sources live in shaders/ at the top of the repo and ship as natten_mps/_shaders.
    package_dir={"natten_mps._shaders": "shaders"},
    package_data={"natten_mps._shaders": SHADER_FILES, "natten_mps.metal": ["emulator_shim/metal_stdlib", "emulator_shim/*.h", "emulator_shim/*.cuh"]},
    include_package_data=False,
    install_requires=["torch>=2.8", "numpy"],
    extras_require={
        # natten (upstream NATTEN, its CPU build) for tests/test_upstream_parity.py. Its sdist builds
        # against the installed torch: install it first with `pip install --no-build-isolation
        # natten==0.21.7` (pip would otherwise fetch a second, CUDA, torch to build it); then this
        # extra finds it satisfied. See .github/workflows/tests.yml.
        "test": ["pytest>=7", "setuptools>=64", "wheel", "matplotlib", "natten==0.21.7"],
        "bench": ["matplotlib"],
    },
)
