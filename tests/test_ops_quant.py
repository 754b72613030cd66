"""linear_quant (GGUF Q4_1 / Q8_0 blocks) against reference.linear_quant_ref.

Tolerances: fp32 x within 1e-5 * sqrt(K) of the fp64 product of the same
dequantized weights (the kernels' dequantized values are the reference's
exactly, so only the fp32 accumulation differs); bf16 x within twice torch's own
error for bf16 x against the bf16-rounded dequantized weights, plus 1e-6; bf16 x
on the int8 path (few rows; VNNI or AVX2 maddubs) within the output's bf16 rounding of
linear_quant_int8_ref plus 1e-5 * sqrt(K).
Run on every ISA path this CPU has by tests/test_isa_dispatch.py.
"""
import gguf
import numpy as np
import pytest
import torch

import entmtp.ops  # noqa: F401  (registers torch.ops.entmtp.*)
from entmtp.reference import dequantize_ref, linear_quant_int8_ref, linear_quant_ref

QTYPES = {0: gguf.GGMLQuantizationType.Q4_1, 1: gguf.GGMLQuantizationType.Q8_0}


def int8_path(M: int) -> bool:
    return M <= torch.ops.entmtp.linear_quant_int8_rows()


def test_int8_rows_by_path():
    # VNNI paths hand over to the dequantizing route early (it has fast unpacking there),
    # amx earliest (its dequantized rows run on AMX tiles).
    rows = torch.ops.entmtp.linear_quant_int8_rows()
    assert rows == {"portable": 0, "avx2": 32, "avx512": 32, "avx512bf16": 8, "amx": 4}[torch.ops.entmtp.cpu_isa()]
# K = 96 and 224 end a row with a partial 4-block group on the int8 path (M <= 4). M = 6
# and 8 are the int8 route on avx512bf16 and the dequantizing one on amx.
SHAPES = [(1, 576, 960), (3, 1536, 576), (4, 32, 17), (2, 96, 20), (1, 224, 9), (6, 96, 33), (8, 576, 70),
          (17, 64, 40), (64, 576, 3072), (130, 96, 577)]


def blocks(w: torch.Tensor, qtype: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(gguf.quants.quantize(w.numpy(), QTYPES[qtype])))


def case(M, K, N, qtype, seed=0):
    g = torch.Generator().manual_seed(seed * 7919 + M * 1000 + N)
    w = torch.randn(N, K, generator=g) * 0.05
    return torch.randn(M, K, generator=g), blocks(w, qtype)


@pytest.mark.parametrize("qtype", [0, 1])
def test_dequantize_ref_matches_gguf(qtype):
    _, wq = case(2, 96, 8, qtype)
    ours = dequantize_ref(wq, qtype)
    theirs = torch.from_numpy(gguf.quants.dequantize(wq.numpy(), QTYPES[qtype]).astype(np.float32))
    # gguf rounds d * q and + m separately; ours rounds once (the kernels' FMA).
    assert torch.allclose(ours, theirs.reshape(ours.shape), rtol=2 ** -23, atol=1e-9)


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("qtype", [0, 1])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_quant_matches_reference(M, K, N, qtype, x_dtype, with_bias):
    x, wq = case(M, K, N, qtype)
    x = x.to(x_dtype)
    b = torch.randn(N) if with_bias else None
    out = torch.ops.entmtp.linear_quant(x, wq, qtype, b)
    assert out.dtype == x_dtype and out.shape == (M, N)
    if x_dtype == torch.float32:
        exact = linear_quant_ref(x.double(), wq, qtype, b)
        assert (out.double() - exact).abs().max().item() <= 1e-5 * K ** 0.5
    elif int8_path(M):
        # int8 activations: fp32 scale products and sums, then the bf16 output rounding.
        exact = linear_quant_int8_ref(x, wq, qtype, b)
        assert ((out.double() - exact).abs() <= 2 ** -8 * exact.abs() + 1e-5 * K ** 0.5).all()
    else:
        w16 = dequantize_ref(wq, qtype).bfloat16()
        exact = torch.nn.functional.linear(x.double(), w16.double(), None if b is None else b.double())
        torch_err = (torch.nn.functional.linear(x, w16, None if b is None else b.bfloat16()).double()
                     - exact).abs().max().item()
        assert (out.double() - exact).abs().max().item() <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("qtype", [0, 1])
def test_fp32_rows_do_not_depend_on_the_other_rows(qtype):
    # The exactness contract: a tree row's output equals the same row decoded alone.
    x, wq = case(70, 576, 200, qtype, seed=3)
    whole = torch.ops.entmtp.linear_quant(x, wq, qtype, None)
    for rows in (slice(0, 1), slice(5, 21), slice(3, 7), slice(69, 70)):
        assert torch.equal(torch.ops.entmtp.linear_quant(x[rows], wq, qtype, None), whole[rows])


def test_strided_x_is_read_in_place():
    x, wq = case(6, 64, 33, 0, seed=5)
    wide = torch.cat([x, torch.randn(6, 32)], dim=1)[:, :64]  # row stride 96
    assert torch.equal(torch.ops.entmtp.linear_quant(wide, wq, 0, None),
                       torch.ops.entmtp.linear_quant(x.contiguous(), wq, 0, None))


def test_linear_quant_rejects_bad_inputs():
    _, wq = case(1, 64, 4, 0)  # [4, 40] bytes
    with pytest.raises(RuntimeError, match="qtype must be 0"):
        torch.ops.entmtp.linear_quant(torch.zeros(2, 64), wq, 2, None)
    with pytest.raises(RuntimeError, match="x has K=32 but weight has K=64"):
        torch.ops.entmtp.linear_quant(torch.zeros(2, 32), wq, 0, None)
    with pytest.raises(RuntimeError, match="not whole 34-byte blocks"):
        torch.ops.entmtp.linear_quant(torch.zeros(2, 64), wq, 1, None)
    with pytest.raises(RuntimeError, match="weight must be uint8"):
        torch.ops.entmtp.linear_quant(torch.zeros(2, 64), wq.float(), 0, None)
    with pytest.raises(RuntimeError, match="x must be bfloat16 or float32"):
        torch.ops.entmtp.linear_quant(torch.zeros(2, 64, dtype=torch.float16), wq, 0, None)
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.entmtp.linear_quant(torch.zeros(2, 64), wq, 0, torch.zeros(5))


def test_linear_quant_compiles_fullgraph():
    x, wq = case(3, 64, 16, 1)

    def f(a):
        return torch.ops.entmtp.linear_quant(a * 2, wq, 1, None).relu()

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), f(x))
