"""Bad input raises ValueError/TypeError naming the argument and values."""
import pytest
import torch

import natten_mps


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


Q2 = (2, 8, 8, 4, 16)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: natten_mps.na2d(t(2, 8, 4, 16), t(2, 8, 4, 16), t(2, 8, 4, 16), 3), ValueError, "query must be a 5-D"),
    (lambda: natten_mps.na1d(t(2, 8, 4, 16), t(3, 8, 4, 16), t(3, 8, 4, 16), 3), ValueError, "batch size"),
    (lambda: natten_mps.na2d(t(*Q2), t(2, 8, 9, 4, 16), t(2, 8, 9, 4, 16), 3), ValueError, "spatial shape"),
    (lambda: natten_mps.na2d(t(*Q2), t(2, 8, 8, 3, 16), t(2, 8, 8, 3, 16), 3), ValueError, r"divisible by key/value heads \(3\)"),
    (lambda: natten_mps.na2d(t(*Q2), t(2, 8, 8, 4, 8), t(2, 8, 8, 4, 16), 3), ValueError, "head_dim"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(2, 8, 8, 2, 16), 3), ValueError, "key and value must agree"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 1), ValueError, r"kernel_size must be >= 2.*\(1, 1\)"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 9), ValueError, r"kernel_size \* dilation.*\(9, 9\)"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, dilation=3), ValueError, r"dilation=\(3, 3\)"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, dilation=0), ValueError, "dilation must be >= 1"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, stride=4), ValueError, r"stride=\(4, 4\)"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, stride=0), ValueError, "stride"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), (3, 3, 3)), ValueError, "kernel_size must have 2 entries"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3.0), TypeError, "kernel_size must be a int"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, is_causal=(True,)), ValueError, "is_causal must have 2"),
    (lambda: natten_mps.na2d(t(*Q2, dtype=torch.int32), t(*Q2), t(*Q2), 3), TypeError, "query must be float32"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2, dtype=torch.float16), t(*Q2), 3), TypeError, "same dtype"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2).to("meta"), t(*Q2), 3), ValueError, "same device"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, additional_keys=t(2, 3, 4, 16)), ValueError,
     "additional_keys and additional_values must both be provided"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, additional_keys=t(2, 3, 4, 16),
                             additional_values=t(2, 2, 4, 16)), ValueError, "must agree"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, additional_keys=t(2, 3, 4, 8),
                             additional_values=t(2, 3, 4, 8)), ValueError, "additional_keys head dim"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, additional_keys=t(2, 3, 2, 16),
                             additional_values=t(2, 3, 2, 16)), ValueError, "4 heads"),
    (lambda: natten_mps.na2d(t(*Q2), t(*Q2), t(*Q2), 3, scale="x"), TypeError, "scale"),
    (lambda: natten_mps.na2d([1], t(*Q2), t(*Q2), 3), TypeError, "query must be a torch.Tensor"),
    (lambda: natten_mps.attention(t(2, 8, 4, 16), t(2, 6, 4, 16), t(2, 6, 4, 16), is_causal="yes"), TypeError,
     "is_causal must be a bool"),
    (lambda: natten_mps.merge_attentions([t(2, 8, 4, 16)], [t(2, 8, 4)]), ValueError, "at least two outputs"),
    (lambda: natten_mps.merge_attentions([t(2, 8, 4, 16), t(2, 7, 4, 16)], [t(2, 8, 4), t(2, 7, 4)]), ValueError,
     r"outputs\[1\] has shape"),
    (lambda: natten_mps.merge_attentions([t(2, 8, 4, 16), t(2, 8, 4, 16)], [t(2, 8, 4), t(2, 8, 3)]), ValueError,
     r"lse_tensors\[1\] has shape"),
    (lambda: natten_mps.set_backend("cuda"), ValueError, "backend must be one of"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_metal_backend_without_mps_is_a_clear_error():
    natten_mps.set_backend("metal")
    with pytest.raises(RuntimeError, match="needs MPS tensors"):
        natten_mps.na1d(t(1, 8, 2, 4), t(1, 8, 2, 4), t(1, 8, 2, 4), 3)


def test_upstream_kernel_choices_are_accepted_and_change_nothing():
    q = torch.randn(1, 12, 2, 8)
    base = natten_mps.na1d(q, q, q, 5)
    got = natten_mps.na1d(q, q, q, 5, backend="cutlass-fna", q_tile_shape=(64,), kv_tile_shape=(64,),
                          run_persistent_kernel=False, torch_compile=False)
    torch.testing.assert_close(got, base)
    torch.testing.assert_close(natten_mps.attention(q, q, q, backend="flex-fmha", q_tile_size=64),
                               natten_mps.attention(q, q, q))
    with pytest.raises(TypeError, match=r"na1d\(\) got unexpected keyword arguments \['tile'\]"):
        natten_mps.na1d(q, q, q, 5, tile=3)
    with pytest.raises(ValueError, match="varlen arguments \\['seqlens_Q'\\] are not supported"):
        natten_mps.attention(q, q, q, seqlens_Q=torch.tensor([12]))
