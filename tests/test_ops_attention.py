"""entmtp.ops.tree_attention against its pure-torch spec (entmtp.reference).

Accuracy rule (FlashAttention's): the op's max error against an fp64 reference
is at most twice the error of the torch reference computed in the input's low
precision, plus a tiny absolute floor.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from entmtp import ops
from entmtp.reference import (
    causal_tree_bits,
    dense_mask_from_tree_bits,
    tree_attention_ref,
    tree_bits_from_parents,
)
from entmtp.trees.tree import ancestor_bits

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_parents(n: int, seed: int, fan: int = 6) -> torch.Tensor:
    """A random tree in topological order: each node hangs under one of the `fan` previous nodes."""
    rng = random.Random(seed)
    return torch.tensor([-1] + [rng.randrange(max(0, i - fan), i) for i in range(1, n)])


def make_inputs(B, T, Hq, Hkv, L, D, dtype, device="cpu", seed=0):
    """q as a view of a fused qkv output, k/v as slices of a larger cache (non-contiguous, like the model)."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, generator=gen).to(dtype)
    q = qkv[..., :Hq * D].view(B, T, Hq, D)
    cache = torch.randn(2, B, Hkv, L + T + 7, D, generator=gen).to(dtype)
    k, v = cache[0, :, :, :L + T], cache[1, :, :, :L + T]
    return q.to(device), k.to(device), v.to(device)


def assert_flash_rule(q, k, v, bits, scale, out, floor=1e-5):
    exact = tree_attention_ref(q.double(), k.double(), v.double(), bits, scale)
    low = tree_attention_ref(q, k, v, bits, scale, compute_dtype=q.dtype)
    err = (out.double() - exact).abs().max().item()
    err_low = (low.double() - exact).abs().max().item()
    assert err <= 2 * err_low + floor, f"op error {err:.3e} vs torch low-precision error {err_low:.3e}"


# (B, T, Hq, Hkv, L, D, tree): GQA ratios 1, 3, 4; D 64, 128 and a generic 8/80;
# T = 1, L = 0, one-word (64) and two-word (128) trees; Lk large enough for key splits.
# In bf16, tiles of more than 4 rows with D a multiple of 32 take the AMX tiles on the AMX path
# (kernels/attention_amx.h: D up to 128, blocks of 64 keys in groups of 16) and the bf16
# dot-product tiles on the AVX-512-BF16 path (kernels/attention_bf16dp.h); the rest fp32 tiles.
SHAPES = [
    (1, 1, 9, 3, 300, 64, "none"),      # decode, GQA 3
    (1, 1, 9, 3, 3000, 64, "none"),     # decode with key splits
    (2, 8, 8, 2, 50, 128, "tree"),      # GQA 4, D 128
    (1, 64, 4, 4, 37, 64, "tree"),      # GQA 1, W = 1 full word
    (1, 128, 4, 1, 20, 64, "tree"),     # 128-node tree, W = 2
    (1, 16, 2, 2, 0, 64, "causal"),     # L = 0 (prefill)
    (1, 1, 2, 1, 0, 64, "tree"),        # single-node tree, L = 0: one key
    (1, 8, 6, 3, 2100, 128, "tree"),    # tiled path with key splits
    (1, 5, 2, 2, 33, 8, "tree"),        # generic small D
    (1, 3, 4, 2, 10, 80, "causal"),     # generic D, not a multiple of 32
    # The default model's verify shapes (9 / 3 heads of 64): 6 and 27 rows a kv head,
    # cut into tiles of 6 and 14 / 13 rows; 256 + T keys end on an odd key block.
    (1, 2, 9, 3, 300, 64, "tree"),
    (1, 9, 9, 3, 256, 64, "tree"),
    (1, 17, 9, 3, 256, 64, "tree"),     # a 16-node tree: 51 rows, two tiles a kv head
    (1, 12, 4, 2, 70, 32, "tree"),      # D 32; 82 keys: a 64-key block, then 18 (a group of 2)
    (1, 7, 3, 1, 113, 64, "causal"),    # 21 rows (two row blocks, 11 padded); 120 keys
]


def _bits(kind, T, seed):
    return {"none": None, "causal": causal_tree_bits(T), "tree": tree_bits_from_parents(random_parents(T, seed))}[kind]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, dtype):
    B, T, Hq, Hkv, L, D, kind = shape
    q, k, v = make_inputs(B, T, Hq, Hkv, L, D, dtype, seed=T + L)
    bits = _bits(kind, T, seed=T)
    scale = 1.0 / math.sqrt(D)
    out = ops.tree_attention(q, k, v, bits, scale)
    assert out.shape == (B, T, Hq, D) and out.dtype == dtype and out.is_contiguous()
    assert_flash_rule(q, k, v, bits, scale, out)


def test_chain_tree_equals_causal():
    q, k, v = make_inputs(1, 40, 6, 2, 100, 64, torch.float32)
    chain = tree_bits_from_parents(torch.arange(-1, 39))
    assert torch.equal(chain, causal_tree_bits(40))
    assert torch.equal(ops.tree_attention(q, k, v, chain, 0.125), ops.tree_attention(q, k, v, None, 0.125))


def test_tree_mask_actually_masks():
    # Two siblings under the root: changing new token 2's value may change
    # only row 2 (token 1 is its sibling, not an ancestor; the root precedes it).
    q, k, v = make_inputs(1, 3, 2, 2, 5, 64, torch.float32)
    bits = tree_bits_from_parents(torch.tensor([-1, 0, 0]))
    base = ops.tree_attention(q, k, v, bits, 0.125)
    v2 = v.clone()
    v2[:, :, -1] += 10.0  # the value of new token 2
    moved = ops.tree_attention(q, k, v2, bits, 0.125)
    assert torch.equal(base[:, :2], moved[:, :2])
    assert not torch.allclose(base[:, 2], moved[:, 2])


def test_row_without_visible_key_is_zero():
    q, k, v = make_inputs(1, 2, 2, 1, 0, 64, torch.float32)
    bits = torch.tensor([[1], [0]], dtype=torch.int64)  # row 1 sees nothing
    out = ops.tree_attention(q, k, v, bits, 0.125)
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert torch.equal(out, tree_attention_ref(q, k, v, bits, 0.125))


def test_bf16_tiles_give_a_row_without_visible_key_zeros():
    """The larger bf16 tiles (AMX or vdpbf16ps: 8 rows a kv head here) keep a fully masked row at zero."""
    q, k, v = make_inputs(1, 8, 2, 2, 0, 64, torch.bfloat16)
    bits = causal_tree_bits(8).clone()
    bits[1] = 0  # row 1 sees nothing
    out = ops.tree_attention(q, k, v, bits, 0.125)
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert_flash_rule(q, k, v, bits, 0.125, out)


def test_thread_count_does_not_change_result():
    q, k, v = make_inputs(1, 1, 9, 3, 2500, 64, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.tree_attention(q, k, v, None, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(one, ops.tree_attention(q, k, v, None, 0.125), atol=1e-6, rtol=1e-5)


def test_tree_bits_helpers():
    parents = random_parents(130, seed=3)
    bits = tree_bits_from_parents(parents)
    assert bits.shape == (130, 3) and bits.dtype == torch.int64
    assert torch.equal(bits, ancestor_bits(parents))  # agrees with the tree module's builder
    dense = dense_mask_from_tree_bits(bits, 4)
    assert dense.shape == (130, 134) and dense[:, :4].all()
    for i in (0, 63, 64, 100, 129):  # each row: exactly the ancestors and itself
        anc, node = set(), i
        while node >= 0:
            anc.add(node)
            node = int(parents[node])
        assert set(torch.nonzero(dense[i, 4:]).flatten().tolist()) == anc
    with pytest.raises(ValueError):
        tree_bits_from_parents(torch.tensor([-1, 1]))


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda q, k, v, b: (q[0], k, v, b), "q must be 4-D"),
        (lambda q, k, v, b: (q, k[0], v, b), "k must be 4-D"),
        (lambda q, k, v, b: (q, k, v.double(), b), "v must have q's dtype"),
        (lambda q, k, v, b: (q, k, v[:, :, :-1], b), "v must have k's shape"),
        (lambda q, k, v, b: (q[..., :60], k, v, b), "k has head dim"),
        (lambda q, k, v, b: (q, k, v, b[:, :0]), "tree_bits must be"),
        (lambda q, k, v, b: (q, k, v, b.int()), "tree_bits must be int64"),
        (lambda q, k, v, b: (torch.randn(1, 4, 4, 128)[..., ::2], k, v, b), "q's last dim must be contiguous"),
        (lambda q, k, v, b: (q, k[:, :, :3], v[:, :, :3], b), "fewer than the T"),
    ],
)
def test_boundary_checks(mutate, pattern):
    q, k, v = make_inputs(1, 4, 4, 2, 6, 64, torch.float32)
    bits = causal_tree_bits(4)
    with pytest.raises(RuntimeError, match=pattern):
        ops.tree_attention(*mutate(q, k, v, bits), 0.125)


def test_head_ratio_check_names_heads():
    q, k, v = make_inputs(1, 2, 5, 2, 3, 64, torch.float32)
    with pytest.raises(RuntimeError, match=r"q heads \(5\) must be a multiple of k heads \(2\)"):
        ops.tree_attention(q, k, v, None, 0.125)


def test_opcheck():
    q, k, v = make_inputs(1, 4, 4, 2, 6, 64, torch.float32)
    for bits in (None, causal_tree_bits(4)):
        torch.library.opcheck(torch.ops.entmtp.tree_attention.default, (q, k, v, bits, 0.125),
                              test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    q, k, v = make_inputs(1, 4, 4, 2, 6, 64, torch.float32)
    bits = causal_tree_bits(4)

    def step(q, k, v, bits):
        return ops.tree_attention(q * 1.0, k, v, bits, 0.125).sum(-1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(q, k, v, bits), step(q, k, v, bits))


# --------------------------------------------------------------------------- #
# CUDA
# --------------------------------------------------------------------------- #

@cuda
def test_cuda_kernels_registered():
    assert ops.has_cuda_kernels()


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_matches_reference(shape, dtype):
    B, T, Hq, Hkv, L, D, kind = shape
    if D % 32 or D > 128:  # the CUDA kernel takes D in {32, 64, 96, 128}
        q, k, v = make_inputs(B, T, Hq, Hkv, L, D, dtype, device="cuda")
        with pytest.raises(RuntimeError, match="head dim"):
            ops.tree_attention(q, k, v, None, 0.1)
        return
    q, k, v = make_inputs(B, T, Hq, Hkv, L, D, dtype, device="cuda", seed=T + L)
    bits = _bits(kind, T, seed=T)
    bits = bits.cuda() if bits is not None else None
    out = ops.tree_attention(q, k, v, bits, 1.0 / math.sqrt(D))
    assert out.device.type == "cuda" and out.shape == (B, T, Hq, D)
    assert_flash_rule(q, k, v, bits, 1.0 / math.sqrt(D), out)


@cuda
def test_cuda_device_mismatch_named():
    q, k, v = make_inputs(1, 4, 4, 2, 6, 64, torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match="tree_bits is on"):
        torch.ops.entmtp.tree_attention.default(q, k, v, causal_tree_bits(4), 0.125)
    with pytest.raises(RuntimeError, match="k is on"):
        torch.ops.entmtp.tree_attention.default(q, k.cpu(), v, None, 0.125)


@cuda
def test_cuda_graph_capture():
    q, k, v = make_inputs(1, 8, 9, 3, 500, 64, torch.bfloat16, device="cuda")
    bits = tree_bits_from_parents(random_parents(8, 1)).cuda()
    eager = ops.tree_attention(q, k, v, bits, 0.125)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.tree_attention(q, k, v, bits, 0.125)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.tree_attention(q, k, v, bits, 0.125)
    q.mul_(-1.0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(captured.float(), ops.tree_attention(q, k, v, bits, 0.125).float())
    assert not torch.allclose(captured.float(), eager.float())
