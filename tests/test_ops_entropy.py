"""entmtp.ops.token_entropy against its pure-torch spec (entmtp.reference).

Accuracy rule: max error against fp64 at most twice that of torch in the
input's own precision (fp32 for fp32 logits), plus a tiny absolute floor.
Argmax and top-k ids must match exactly (ties: lowest index first).
"""
from __future__ import annotations

import pytest
import torch

from entmtp import ops
from entmtp.reference import token_entropy_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def check_against_reference(logits: torch.Tensor, k: int, floor: float = 1e-5) -> None:
    got = ops.token_entropy(logits, k)
    exact = token_entropy_ref(logits.double().cpu(), k)
    low = token_entropy_ref(logits.cpu(), k, compute_dtype=logits.dtype)
    names = ("entropy", "argmax", "max_prob", "topk_ids", "topk_probs")
    n = logits.shape[0]
    shapes = ((n,), (n,), (n,), (n, k), (n, k))
    dtypes = (torch.float32, torch.int64, torch.float32, torch.int64, torch.float32)
    for name, g, e, lo, shape, dtype in zip(names, got, exact, low, shapes, dtypes):
        assert g.shape == shape and g.dtype == dtype and g.device == logits.device, name
        g = g.cpu()
        if dtype == torch.int64:
            assert torch.equal(g, e), name
            continue
        assert torch.equal(g.isnan(), e.isnan()), name
        ok = ~e.isnan()
        if not ok.any():
            continue
        err = (g[ok].double() - e[ok]).abs().max().item()
        err_low = (lo[ok].double() - e[ok]).abs().max().item()
        assert err <= 2 * err_low + floor, f"{name}: error {err:.3e} vs torch's {err_low:.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, vocab, k", [
    (1, 1, 1),            # a single entry
    (3, 7, 5),            # V below one vector
    (4, 1000, 16),        # V not a multiple of any block
    (1, 49152, 10),       # N = 1: the row is split across threads
    (2, 49165, 0),        # k = 0, V ragged
    (64, 2053, 3),        # many rows
])
def test_matches_reference(n, vocab, k, dtype):
    gen = torch.Generator().manual_seed(n * vocab + k)
    logits = (torch.randn(n, vocab, generator=gen) * 3).to(dtype)
    check_against_reference(logits, k)


def test_large_vocab_single_row():
    logits = torch.randn(1, 131072) * 5
    check_against_reference(logits, 4)


@pytest.mark.parametrize("scale", [1e-3, 1e2, 1e4])
def test_scaled_logits(scale):
    logits = torch.randn(5, 3001) * scale + 50.0
    check_against_reference(logits, 8)


def test_extreme_values_and_masking():
    logits = torch.randn(6, 5000)
    logits[0, ::2] = float("-inf")                   # masked vocabulary
    logits[1, :] = float("-inf")
    logits[1, 1234] = 3.0                            # one survivor: entropy 0, p = 1
    logits[2, :100] = 1e30                           # huge, tied maxima
    logits[3] = -1e30                                # all huge negative, tied
    logits[3, 4000:] = -3e38
    logits[4, :] = float("-inf")                     # fully masked row: NaN, argmax 0
    logits[5, 7] = 3e38                              # near the fp32 limit
    check_against_reference(logits, 16)
    entropy, argmax, max_prob, ids, _ = ops.token_entropy(logits, 16)
    assert entropy[1] == 0.0 and max_prob[1] == 1.0 and argmax[1] == 1234
    assert argmax[2] == 0 and argmax[3] == 0 and argmax[4] == 0 and argmax[5] == 7
    assert torch.isnan(entropy[4]) and torch.isfinite(entropy[:4]).all()
    assert abs(entropy[2].item() - torch.log(torch.tensor(100.0)).item()) < 1e-5
    assert ids[2].tolist() == list(range(16))  # ties: lowest index first


def test_ties_prefer_lowest_index_bf16():
    # bf16 on a small integer grid: many exact ties in argmax and top-k.
    logits = torch.randint(-4, 4, (8, 3000)).to(torch.bfloat16)
    check_against_reference(logits, 16)


def test_non_contiguous_rows():
    base = torch.randn(4, 2 * 3000)
    check_against_reference(base[:, :3000], 3)


@pytest.mark.parametrize("bad, k, pattern", [
    (torch.randn(3), 0, "logits must be 2-D"),
    (torch.randn(2, 10).double(), 0, "logits must be float32, bfloat16 or float16"),
    (torch.randn(2, 10), 17, "k must be in"),
    (torch.randn(2, 10), 11, "exceeds the vocabulary"),
    (torch.randn(2, 0), 0, "V > 0"),
    (torch.randn(10, 2).t(), 0, "last dim must be contiguous"),
])
def test_boundary_checks(bad, k, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        ops.token_entropy(bad, k)


def test_opcheck():
    for k in (0, 4):
        torch.library.opcheck(torch.ops.entmtp.token_entropy.default, (torch.randn(3, 100), k),
                              test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    def step(logits):
        entropy, argmax, max_prob, ids, probs = ops.token_entropy(logits * 2.0, 4)
        return entropy + max_prob, argmax, ids, probs.sum(-1)

    logits = torch.randn(3, 500)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(logits), step(logits)):
        assert torch.allclose(a, b) if a.is_floating_point() else torch.equal(a, b)


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, vocab, k", [(1, 1, 1), (3, 7, 5), (4, 1000, 16), (1, 131072, 10), (64, 49165, 0)])
def test_cuda_matches_reference(n, vocab, k, dtype):
    logits = (torch.randn(n, vocab) * 3).to(dtype).cuda()
    check_against_reference(logits, k)


@cuda
def test_cuda_extreme_values():
    logits = torch.randn(4, 5000)
    logits[0, ::2] = float("-inf")
    logits[1, :] = float("-inf")
    logits[2, :100] = 1e30
    logits[3, 7] = 3e38
    check_against_reference(logits.cuda(), 16)


@cuda
def test_cuda_graph_capture():
    logits = torch.randn(2, 49152, device="cuda")
    ops.token_entropy(logits, 8)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.token_entropy(logits, 8)
    logits.mul_(3.0)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, ops.token_entropy(logits, 8)):
        assert torch.allclose(a.float(), b.float())
