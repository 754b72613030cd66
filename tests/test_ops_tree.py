"""entmtp.ops.tree_accept and entmtp.ops.kv_commit against their specs."""
from __future__ import annotations

import random

import pytest
import torch

from entmtp import ops
from entmtp.reference import kv_commit_ref, tree_accept_ref

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_tree(n: int, seed: int, fan: int = 4):
    """parents [n] and depth of a random tree; node i hangs under one of the previous `fan` nodes."""
    rng = random.Random(seed)
    parents = [-1] + [rng.randrange(max(0, i - fan), i) for i in range(1, n)]
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
    return torch.tensor(parents), max(depth)


def greedy_inputs(n: int, seed: int, vocab: int = 3):
    """A tiny vocabulary makes drafted tokens match the base argmax often, so paths are deep."""
    gen = torch.Generator().manual_seed(seed)
    parents, max_depth = random_tree(n, seed)
    tokens = torch.randint(0, vocab, (n,), generator=gen)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    return tokens, parents, targets, max_depth


def assert_same(got, want):
    for g, w in zip(got, want):
        assert g.dtype == torch.int64 and g.shape == w.shape
        assert torch.equal(g.cpu(), w.cpu())


@pytest.mark.parametrize("n", [1, 2, 5, 26, 64, 300])
@pytest.mark.parametrize("seed", range(4))
def test_greedy_matches_reference(n, seed):
    tokens, parents, targets, max_depth = greedy_inputs(n, seed)
    got = ops.tree_accept(tokens, parents, targets, max_depth)
    assert_same(got, tree_accept_ref(tokens, parents, targets, max_depth))


@pytest.mark.parametrize("n", [1, 7, 64])
@pytest.mark.parametrize("seed", range(4))
def test_typical_matches_reference(n, seed):
    tokens, parents, targets, max_depth = greedy_inputs(n, seed)
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, generator=gen) * 0.3
    entropy = torch.rand(n, generator=gen) * 4
    got = ops.tree_accept(tokens, parents, targets, max_depth, probs, entropy, 0.09, 0.3)
    assert_same(got, tree_accept_ref(tokens, parents, targets, max_depth, probs, entropy, 0.09, 0.3))


def test_greedy_worked_example():
    #        0
    #      /   \
    #     1     2        base argmax after the root is 7: node 1 (7) matches, node 2 (8) does not
    #    / \    |
    #   3   4   5        after node 1 the base says 9: nodes 3 and 4 both draft 9 (tie -> node 3)
    parents = torch.tensor([-1, 0, 0, 1, 1, 2])
    tokens = torch.tensor([0, 7, 8, 9, 9, 4])
    targets = torch.tensor([7, 9, 4, 11, 12, 13])
    path, accept_len, bonus = ops.tree_accept(tokens, parents, targets, 3)
    assert path.tolist() == [0, 1, 3, -1] and accept_len.item() == 2 and bonus.item() == 11


def test_typical_threshold_uses_parent_entropy():
    parents = torch.tensor([-1, 0])
    tokens, targets = torch.tensor([0, 5]), torch.tensor([6, 6])  # greedy would reject node 1
    probs = torch.tensor([0.0, 0.05])
    # threshold = min(0.09, 0.3 * exp(-H_root)): H_root = 0 -> 0.09 (reject); H_root = 3 -> 0.015 (accept)
    for h_root, accepted in ((0.0, 0), (3.0, 1)):
        entropy = torch.tensor([h_root, 0.0])
        _, accept_len, bonus = ops.tree_accept(tokens, parents, targets, 1, probs, entropy)
        assert accept_len.item() == accepted and bonus.item() == 6


@pytest.mark.parametrize("args, pattern", [
    (dict(parents=torch.tensor([0, 0, 1])), r"parents\[0\] must be -1"),
    (dict(parents=torch.tensor([-1, 2, 1])), r"parents\[1\]=2 must lie in"),
    (dict(max_depth=1), "has depth 2 > max_depth=1"),
    (dict(max_depth=-1), "max_depth must be in"),
    (dict(target_ids=torch.tensor([1, 2])), "target_ids must be 1-D"),
    (dict(node_tokens=torch.tensor([1, 2, 3], dtype=torch.int32)), "node_tokens must be int64"),
    (dict(draft_probs=torch.rand(3)), "must be given together"),
    (dict(draft_probs=torch.rand(3).double(), entropy=torch.rand(3)), "draft_probs must be float32"),
])
def test_accept_boundary_checks(args, pattern):
    kwargs = dict(node_tokens=torch.tensor([1, 2, 3]), parents=torch.tensor([-1, 0, 1]),
                  target_ids=torch.tensor([2, 3, 4]), max_depth=2)
    kwargs.update(args)
    with pytest.raises(RuntimeError, match=pattern):
        ops.tree_accept(**kwargs)


def make_cache(layers=2, batch=2, heads=3, slots=40, dim=16, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(layers, 2, batch, heads, slots, dim, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("src, dst", [([20, 23, 24, 30], 20), ([21, 22, 23], 20), ([25], 20), ([], 5),
                                      ([5, 9, 12, 13, 39], 3)])
def test_kv_commit_matches_reference(src, dst, dtype):
    kv = make_cache(dtype=dtype)
    want = kv.clone()
    kv_commit_ref(want, torch.tensor(src, dtype=torch.int64), dst)
    ptr = kv.data_ptr()
    ops.kv_commit(kv, torch.tensor(src, dtype=torch.int64), dst)
    assert kv.data_ptr() == ptr and torch.equal(kv, want)


def test_kv_commit_strided_view():
    # The cache as a slot-slice of a bigger buffer: dims 0..4 strided, D contiguous.
    big = make_cache(slots=64, dim=32)
    kv = big[:, :, :, :, 8:48, :16]
    want = kv.clone()
    src = torch.tensor([12, 14, 15])
    kv_commit_ref(want, src, 10)
    ops.kv_commit(kv, src, 10)
    assert torch.equal(kv, want)
    assert torch.equal(big[..., :8, :], make_cache(slots=64, dim=32)[..., :8, :])  # untouched outside the view


@pytest.mark.parametrize("src, dst, pattern", [
    ([20, 20], 10, "strictly increasing"),
    ([9], 10, r"src_slots\[0\]=9 must lie in"),
    ([41], 10, r"must lie in"),
    ([38, 39], 39, "overruns the cache"),
])
def test_kv_commit_value_checks(src, dst, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        ops.kv_commit(make_cache(), torch.tensor(src), dst)


def test_kv_commit_shape_checks():
    with pytest.raises(RuntimeError, match="kv must be 6-D"):
        ops.kv_commit(torch.zeros(2, 3, 4), torch.tensor([1]), 0)
    with pytest.raises(RuntimeError, match="src_slots must be int64"):
        ops.kv_commit(make_cache(), torch.tensor([1], dtype=torch.int32), 0)


def test_opcheck():
    tokens, parents, targets, max_depth = greedy_inputs(12, 0)
    torch.library.opcheck(torch.ops.entmtp.tree_accept.default, (tokens, parents, targets, max_depth),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.entmtp.tree_accept.default,
                          (tokens, parents, targets, max_depth, torch.rand(12), torch.rand(12), 0.09, 0.3),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.entmtp.kv_commit.default, (make_cache(), torch.tensor([21, 25]), 20),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    tokens, parents, targets, max_depth = greedy_inputs(20, 1)

    def step(kv, tokens, parents, targets):
        path, accept_len, bonus = ops.tree_accept(tokens, parents, targets + 0, max_depth)
        ops.kv_commit(kv, torch.tensor([31, 33]), 30)
        return path, accept_len + 1, bonus

    kv_a, kv_b = make_cache(), make_cache()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got, want = compiled(kv_a, tokens, parents, targets), step(kv_b, tokens, parents, targets)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert torch.equal(kv_a, kv_b)


@cuda
@pytest.mark.parametrize("n", [1, 5, 64, 300])
def test_cuda_accept_matches_reference(n):
    for seed in range(3):
        tokens, parents, targets, max_depth = greedy_inputs(n, seed)
        got = ops.tree_accept(tokens.cuda(), parents.cuda(), targets.cuda(), max_depth)
        assert got[0].device.type == "cuda"
        assert_same(got, tree_accept_ref(tokens, parents, targets, max_depth))
        probs, entropy = torch.rand(n) * 0.3, torch.rand(n) * 4
        got = ops.tree_accept(tokens.cuda(), parents.cuda(), targets.cuda(), max_depth, probs.cuda(),
                              entropy.cuda())
        assert_same(got, tree_accept_ref(tokens, parents, targets, max_depth, probs, entropy))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_kv_commit(dtype):
    for src, dst in (([20, 23, 24, 30], 20), ([21, 22, 23], 20), ([5, 9, 12, 13, 39], 3)):
        kv = make_cache(dtype=dtype, dim=64)
        want = kv.clone()
        kv_commit_ref(want, torch.tensor(src), dst)
        kv = kv.cuda()
        ops.kv_commit(kv, torch.tensor(src), dst)  # CPU slots are moved over by the wrapper
        assert torch.equal(kv.cpu(), want)


@cuda
def test_cuda_graph_capture():
    kv = make_cache(dim=64).cuda()
    tokens, parents, targets, max_depth = (t.cuda() if isinstance(t, torch.Tensor) else t
                                           for t in greedy_inputs(26, 0))
    src = torch.tensor([21, 25], device="cuda")
    ops.tree_accept(tokens, parents, targets, max_depth)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        path, accept_len, bonus = ops.tree_accept(tokens, parents, targets, max_depth)
        ops.kv_commit(kv, src, 20)
    want_kv = kv.cpu().clone()
    kv_commit_ref(want_kv, src.cpu(), 20)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(kv.cpu(), want_kv)
    assert_same((path, accept_len, bonus), tree_accept_ref(tokens.cpu(), parents.cpu(), targets.cpu(), max_depth))
