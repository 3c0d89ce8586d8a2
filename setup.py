"""Pure-Python package: natten_mps, sage_mps and the Metal sources under shaders/ (no extension)."""
from pathlib import Path

import re

from setuptools import setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "natten_mps" / "version.py").read_text()).group(1)
SHADER_FILES = sorted(str(p.relative_to(ROOT / "shaders")) for p in (ROOT / "shaders").rglob("*")
                      if p.is_file() and p.suffix in (".metal", ".h", ".md"))

setup(
    name="natten-mps-kernels",
    version=VERSION,
    description="Neighborhood attention and SageAttention for PyTorch, with Metal kernels on Apple Silicon",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    keywords=["neighborhood attention", "NATTEN", "SageAttention", "Metal", "MPS", "Apple Silicon", "PyTorch",
              "attention kernels"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Developers",
        "Intended Audience :: Science/Research",
        "Operating System :: MacOS",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=3.9",
    packages=["natten_mps", "natten_mps.backends", "natten_mps.compat", "natten_mps.compat.v014",
              "natten_mps.compat.v015", "natten_mps.compat.v017", "natten_mps.compat.v020", "natten_mps.compat.v021",
              "natten_mps.compat.path_entry.natten", "natten_mps.extras", "natten_mps.extras.allin1",
              "natten_mps.metal", "natten_mps.utils", "natten_mps._shaders", "sage_mps"],
    # The Metal sources live in shaders/ at the top of the repo and ship as natten_mps/_shaders.
    package_dir={"natten_mps._shaders": "shaders"},
    package_data={"natten_mps._shaders": SHADER_FILES, "natten_mps.metal": ["emulator_shim/metal_stdlib", "emulator_shim/*.h", "emulator_shim/*.cuh",
                                        "msl_prelude/*.h"]},
    include_package_data=False,
    install_requires=["torch>=2.8", "numpy"],
    extras_require={
        # Upstream NATTEN (for tests/test_upstream_parity.py) is not listed: its sdist builds against the
        # installed torch, so install it with `pip install --no-build-isolation natten==0.21.7` (.ci/run does).
        "test": ["pytest>=7", "setuptools>=64", "wheel", "matplotlib", "libclang>=16",
                 "natten-mlx; python_version >= '3.10' and platform_system != 'Windows'", "einops"],
        "bench": ["matplotlib"],
    },
)
