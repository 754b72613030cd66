"""linear_bf16w (bf16 weights, fp32 math) against an fp64 reference."""
import pytest
import torch

import entmtp.ops  # noqa: F401  (registers torch.ops.entmtp.*)
from entmtp.reference import linear_bf16w_ref

SHAPES = [(300, 576, 64), (1, 576, 960), (2, 576, 577), (3, 1536, 576), (4, 64, 17), (7, 100, 33), (64, 576, 3072), (130, 72, 40)]


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_bf16w_matches_reference(M, K, N, x_dtype, with_bias):
    g = torch.Generator().manual_seed(M * 1000 + N)
    x = torch.randn(M, K, generator=g).to(x_dtype)
    w = (torch.randn(N, K, generator=g) * 0.05).bfloat16()
    b = torch.randn(N, generator=g).bfloat16() if with_bias else None
    out = torch.ops.entmtp.linear_bf16w(x, w, b)
    assert out.dtype == x_dtype and out.shape == (M, N)
    exact = linear_bf16w_ref(x.double(), w, b)  # fp64 math on the same bf16 weights
    err = (out.double() - exact).abs().max().item()
    if x_dtype == torch.float32:
        assert err <= 1e-5 * K ** 0.5
    else:
        # Tolerance rule: at most 2x the error of torch's own bf16 computation.
        torch_err = (torch.nn.functional.linear(x, w, b).double() - exact).abs().max().item()
        assert err <= 2 * torch_err + 1e-6


def test_linear_bf16w_rejects_bad_inputs():
    w = torch.zeros(4, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="weight must be bfloat16"):
        torch.ops.entmtp.linear_bf16w(torch.zeros(2, 8), w.float(), None)
    with pytest.raises(RuntimeError, match="x has K=7 but weight has K=8"):
        torch.ops.entmtp.linear_bf16w(torch.zeros(2, 7), w, None)
    with pytest.raises(RuntimeError, match="x must be 2-D"):
        torch.ops.entmtp.linear_bf16w(torch.zeros(8), w, None)


def test_linear_bf16w_compiles_fullgraph():
    w = (torch.randn(16, 32) * 0.1).bfloat16()
    x = torch.randn(3, 32)

    def f(a):
        return torch.ops.entmtp.linear_bf16w(a * 2, w, None).relu()

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x), f(x))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_linear_bf16w_rows_alone_equal_rows_in_a_batch(x_dtype):
    # Plain decoding multiplies one row, verification a tree's rows: fp32 greedy
    # output equals plain decoding's only if a row's result does not depend on how
    # many rows came with it. The kernels switch tiling at a few rows (one weight
    # row at a time up to 8 input rows, several side by side above), so cross that switch.
    if x_dtype == torch.bfloat16 and torch.ops.entmtp.cpu_isa() == "amx":
        pytest.skip("bf16 x on the amx path runs AMX tiles, whose sums are in another order than one row's")
    g = torch.Generator().manual_seed(7)
    w = (torch.randn(37, 600, generator=g) * 0.05).bfloat16()  # N not a multiple of 4, K of 32
    x = torch.randn(17, 600, generator=g).to(x_dtype)
    alone = torch.cat([torch.ops.entmtp.linear_bf16w(x[i:i + 1], w, None) for i in range(17)])
    for m in (2, 3, 7, 8, 9, 12, 17):
        batch = torch.ops.entmtp.linear_bf16w(x[:m], w, None)
        assert torch.equal(batch, alone[:m]), f"{m} rows"
