import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Tolerances per dtype for comparisons against the float64 reference (absolute, on unit-scale data).
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# bfloat16 gradients: the worst |got - ref| / (1 + |ref|) over the suite's bfloat16 gradient checks
# was 0.027 (2026-12-05, emulated Metal path and pure path); 3.5e-2 leaves a 28% margin.
GRAD_TOL = {torch.float64: 1e-8, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3.5e-2}


@pytest.fixture
def emulate():
    """Run the public ops through their Metal code path on CPU, with the emulator."""
    import natten_mps
    natten_mps.set_emulation(True)
    yield
    natten_mps.set_emulation(False)


@pytest.fixture(autouse=True)
def _reset_backend():
    import natten_mps
    from natten_mps import tuning
    from natten_mps.backends import gpu_profile
    yield
    natten_mps.set_backend("auto")
    natten_mps.set_emulation(False)
    natten_mps.set_metal_on_cuda(False)
    gpu_profile.set_profile(None)
    tuning.set_enabled(None)
    tuning.unpin()
    tuning.set_timer(None)
    tuning.forget()


@pytest.fixture
def gpu_profile():
    """Select the emulated GPU profile for one test: ``gpu_profile("none")`` (the large tiles of a
    GPU never short of work), ``gpu_profile("apple-m1")``, ... Without it the emulator sizes tiles
    for ``natten_mps.backends.gpu_profile.DEFAULT_EMULATED`` (an M-series GPU, as a Mac would), or
    for ``NATTEN_MPS_GPU_PROFILE`` when set. Reset after the test."""
    from natten_mps.backends import gpu_profile as profiles
    yield profiles.set_profile
    profiles.set_profile(None)


@pytest.fixture
def metal_on_cuda():
    """Run the public ops through their Metal code path on CUDA tensors (MSL -> CUDA back end)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import natten_mps
    from natten_mps.metal import runtime
    natten_mps.set_metal_on_cuda(True)
    runtime.set_poison_outputs(True)
    yield
    natten_mps.set_metal_on_cuda(False)
    runtime.set_poison_outputs(False)


@pytest.fixture(params=["cpu", "cuda"])
def dev(request):
    """Kernel tests: ``cpu`` runs the Metal kernels in the emulator, ``cuda`` through the MSL -> CUDA
    back end (skipped without a GPU). Outputs are poisoned before the kernels write them."""
    import natten_mps
    from natten_mps.metal import runtime
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        natten_mps.set_metal_on_cuda(True)
    natten_mps.set_emulation(True)
    runtime.set_poison_outputs(True)
    yield request.param
    runtime.set_poison_outputs(False)
