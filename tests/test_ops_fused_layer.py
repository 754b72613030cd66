"""Fused decoder-layer ops (CPU) pinned to their torch composites in entmtp.reference.

Tolerance rule: the op's max error against an fp64 evaluation of the reference
is at most 2x the reference's own error in the same dtype (plus a tiny floor)."""
import pytest
import torch

import entmtp.ops  # noqa: F401  (registers the ops and their fakes)
from entmtp import reference as ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
E = torch.ops.entmtp


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _check(op_out, ref_low, ref_exact, floor=1e-6):
    assert _err(op_out, ref_exact) <= 2 * _err(ref_low, ref_exact) + floor


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,H", [(1, 576), (5, 64), (33, 100)])
def test_rms_norm_and_add(dtype, M, H):
    g = torch.Generator().manual_seed(M + H)
    x = torch.randn(M, H, generator=g).to(dtype)
    r = torch.randn(M, H, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype)
    _check(E.rms_norm(x, w, 1e-5), ref.rms_norm_ref(x, w, 1e-5), ref.rms_norm_ref(x.double(), w.double(), 1e-5))
    normed, summed = E.add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(summed, x + r)  # the same single rounding as torch's add
    _check(normed, ref.add_rms_norm_ref(x, r, w, 1e-5)[0],
           ref.rms_norm_ref(summed.double(), w.double(), 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,Hq,Hkv,D,start", [(1, 1, 9, 3, 64, 7), (1, 17, 4, 2, 128, 0), (2, 3, 2, 1, 8, 5)])
def test_rotary_qkv_writes_cache_and_returns_q(dtype, B, T, Hq, Hkv, D, start):
    g = torch.Generator().manual_seed(T * 7 + D)
    M, S = B * T, start + T + 4
    qkv = torch.randn(M, (Hq + 2 * Hkv) * D, generator=g).to(dtype)
    angles = torch.randn(M, D // 2, generator=g).repeat(1, 2)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    # Caches as strided views of one bigger tensor, like the model's [layers, 2, ...] cache.
    big = torch.zeros(2, 2, B, Hkv, S, D, dtype=dtype)
    k_op, v_op = big[1, 0], big[1, 1]
    q = E.rotary_qkv(qkv, cos, sin, Hq, Hkv, k_op, v_op, start)
    k_low, v_low = torch.zeros(B, Hkv, S, D, dtype=dtype), torch.zeros(B, Hkv, S, D, dtype=dtype)
    q_low = ref.rotary_qkv_ref(qkv, cos, sin, Hq, Hkv, k_low, v_low, start)
    k_ex, v_ex = torch.zeros(B, Hkv, S, D, dtype=torch.float64), torch.zeros(B, Hkv, S, D, dtype=torch.float64)
    q_ex = ref.rotary_qkv_ref(qkv.double(), cos.double(), sin.double(), Hq, Hkv, k_ex, v_ex, start)
    _check(q, q_low, q_ex)
    _check(k_op, k_low, k_ex)
    assert torch.equal(v_op, v_low)
    assert big[0].abs().sum() == 0  # nothing written outside the given layer
    untouched = torch.ones(S, dtype=torch.bool)
    untouched[start:start + T] = False
    assert k_op[:, :, untouched].abs().sum() == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype):
    g = torch.Generator().manual_seed(3)
    gate_up = (3 * torch.randn(7, 2 * 96, generator=g)).to(dtype)
    _check(E.silu_mul(gate_up), ref.silu_mul_ref(gate_up), ref.silu_mul_ref(gate_up.double()))


def test_boundary_checks_name_the_argument():
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="rms_norm: x must have 8 columns|rms_norm: x must have 4 columns"):
        E.rms_norm(x, torch.ones(4), 1e-5)
    with pytest.raises(RuntimeError, match="weight must have x's dtype"):
        E.rms_norm(x, torch.ones(8, dtype=torch.bfloat16), 1e-5)
    cache = torch.zeros(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="exceed the cache"):
        E.rotary_qkv(torch.randn(2, 24), torch.ones(2, 8), torch.ones(2, 8), 1, 1, cache, cache.clone(), 3)
    with pytest.raises(RuntimeError, match="silu_mul: gate_up must be 2-D"):
        E.silu_mul(torch.randn(3))


def test_fused_ops_compile_fullgraph():
    x, r, w = torch.randn(3, 16), torch.randn(3, 16), torch.ones(16)

    def f(a, b):
        normed, summed = E.add_rms_norm(a, b, w, 1e-5)
        return E.silu_mul(torch.cat([normed, summed], -1)) + E.rms_norm(a, w, 1e-5)

    assert torch.allclose(torch.compile(f, fullgraph=True, backend="eager")(x, r), f(x, r))
