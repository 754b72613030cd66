"""Tree data: validation, derived structure, device buffers, JSON, rendering."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from rich.console import Console

from entmtp.errors import EntmtpError, UsageError
from entmtp.trees.files import list_trees, load_tree, save_tree
from entmtp.trees.render import render_tree
from entmtp.trees.tree import MAX_DEPTH, MAX_NODES, MAX_RANK, Tree, ancestor_bits, medusa_candidates, tree_from_paths

TREES_DIR = Path(__file__).resolve().parent.parent / "trees"
MC_SIM_FILE = TREES_DIR / "mc_sim_7b_63.json"


@pytest.fixture(scope="module")
def mc_sim() -> Tree:
    return load_tree(MC_SIM_FILE)


def random_tree(n_paths: int, seed: int, max_depth: int = 5, max_rank: int = 6) -> Tree:
    """A random prefix-closed tree, grown by adding a child under a random existing node."""
    rng = random.Random(seed)
    paths = set()
    while len(paths) < n_paths:
        parent = rng.choice([()] + sorted(paths))
        if len(parent) < max_depth:
            paths.add(parent + (rng.randrange(max_rank),))
    shuffled = [list(p) for p in paths]
    rng.shuffle(shuffled)
    return tree_from_paths(f"random{seed}", shuffled)


def dense_ancestors(parents) -> list[list[bool]]:
    """[T][T]: entry (i, j) True iff j is i or an ancestor of i, by walking up the parents."""
    n_nodes = len(parents)
    matrix = [[False] * n_nodes for _ in range(n_nodes)]
    for node in range(n_nodes):
        walk = node
        while walk != -1:
            matrix[node][walk] = True
            walk = parents[walk]
    return matrix


def unpack_bits(bits: torch.Tensor, n_nodes: int) -> list[list[bool]]:
    columns = torch.arange(n_nodes)
    words = bits[:, columns // 64]                       # [T, T]
    set_bits = (words >> (columns % 64)) & 1             # arithmetic shift is fine: we keep bit 0
    return (set_bits == 1).tolist()


# ----------------------------------------------------------------- structure

def test_mc_sim_7b_63_counts(mc_sim):
    assert mc_sim.n_nodes == 64 and len(mc_sim.paths) == 63
    assert mc_sim.nodes_per_depth == (1, 10, 28, 23, 2)
    assert len(mc_sim.leaves) == 42
    assert mc_sim.max_depth == 4
    assert mc_sim.top_k_needed == 10


def test_mc_sim_file_keeps_the_published_order():
    raw_paths = json.loads(MC_SIM_FILE.read_text())["paths"]
    assert len(raw_paths) == 63
    assert raw_paths[:6] == [[0], [0, 0], [1], [0, 1], [2], [0, 0, 0]]
    assert raw_paths[-3:] == [[0, 0, 0, 1], [1, 6], [0, 7, 0]]
    assert raw_paths != sorted(raw_paths, key=lambda p: (len(p), p))


def test_paths_are_canonical_and_parents_depths_ranks_agree(mc_sim):
    assert list(mc_sim.paths) == sorted(mc_sim.paths, key=lambda p: (len(p), p))
    assert (mc_sim.parents[0], mc_sim.depths[0], mc_sim.ranks[0]) == (-1, 0, -1)
    for node in range(1, mc_sim.n_nodes):
        path = mc_sim.paths[node - 1]
        parent = mc_sim.parents[node]
        assert 0 <= parent < node
        assert mc_sim.depths[node] == len(path) == mc_sim.depths[parent] + 1
        assert mc_sim.ranks[node] == path[-1]
        assert (parent == 0 and len(path) == 1) or mc_sim.paths[parent - 1] == path[:-1]
        assert node in mc_sim.children[parent]


@pytest.mark.parametrize("tree_factory", [
    lambda: load_tree(MC_SIM_FILE),         # T = 64: node 63 uses the sign bit of the word
    lambda: random_tree(150, seed=1),       # T = 151: three words per row
    lambda: tree_from_paths("one", [[0]]),
])
def test_ancestor_bits_match_dense_ancestors(tree_factory):
    tree = tree_factory()
    bits = ancestor_bits(tree.parents)
    assert bits.dtype == torch.int64
    assert bits.shape == (tree.n_nodes, (tree.n_nodes + 63) // 64)
    assert unpack_bits(bits, tree.n_nodes) == dense_ancestors(tree.parents)


def test_ancestor_bits_rejects_bad_parents():
    with pytest.raises(ValueError):
        ancestor_bits([-1, 2, 0])
    with pytest.raises(ValueError):
        ancestor_bits([0, 0])


@pytest.mark.parametrize("tree_factory", [lambda: load_tree(MC_SIM_FILE), lambda: random_tree(40, seed=7)])
def test_retrieve_rows_are_root_to_leaf_chains_covering_every_leaf(tree_factory):
    tree = tree_factory()
    buffers = tree.buffers("cpu", top_k=10)
    leaf_set = {node for node in range(tree.n_nodes) if not tree.children[node]}
    assert buffers.retrieve.shape == (len(leaf_set), tree.max_depth + 1)
    seen_leaves = []
    for row, valid, length in zip(buffers.retrieve.tolist(), buffers.retrieve_valid.tolist(),
                                  buffers.retrieve_lengths.tolist()):
        chain = row[:length]
        assert valid == [True] * length + [False] * (len(row) - length)
        assert row[length:] == [-1] * (len(row) - length)
        assert chain[0] == 0
        for parent, child in zip(chain, chain[1:]):
            assert tree.parents[child] == parent
        assert chain[-1] in leaf_set
        seen_leaves.append(chain[-1])
    assert sorted(seen_leaves) == sorted(leaf_set)
    assert buffers.leaves.tolist() == seen_leaves
    # Padding never aliases a node: -1 appears exactly where the mask is False.
    assert torch.equal(buffers.retrieve == -1, ~buffers.retrieve_valid)


def test_medusa_index_formula_and_candidates(mc_sim):
    top_k = 12
    buffers = mc_sim.buffers("cpu", top_k=top_k)
    expected = [0] + [1 + (len(path) - 1) * top_k + path[-1] for path in mc_sim.paths]
    assert buffers.medusa_index.tolist() == expected

    n_heads = 5
    head_topk_ids = torch.arange(n_heads * top_k).view(n_heads, top_k) + 1000  # id = 1000 + head*k + rank
    tokens = medusa_candidates(torch.tensor(7), head_topk_ids, buffers)
    assert tokens.shape == (mc_sim.n_nodes,)
    assert tokens[0].item() == 7
    for node in range(1, mc_sim.n_nodes):
        head, rank = mc_sim.depths[node] - 1, mc_sim.ranks[node]
        assert tokens[node].item() == 1000 + head * top_k + rank
    assert torch.equal(medusa_candidates(torch.tensor([7]), head_topk_ids, buffers), tokens)
    with pytest.raises(ValueError):
        medusa_candidates(torch.tensor(7), head_topk_ids[:, :10], buffers)
    with pytest.raises(ValueError):
        medusa_candidates(torch.tensor(7), head_topk_ids[:3], buffers)


def test_level_structures_cover_every_node_once(mc_sim):
    buffers = mc_sim.buffers("cpu", top_k=10)
    assert sorted(buffers.level_nodes) == [1, 2, 3, 4]
    assert sorted(buffers.expand_parents) == [0, 1, 2, 3]
    covered = []
    for depth, nodes in buffers.level_nodes.items():
        nodes = nodes.tolist()
        covered += nodes
        assert all(mc_sim.depths[node] == depth for node in nodes)
        assert buffers.level_parents[depth].tolist() == [mc_sim.parents[node] for node in nodes]
        assert buffers.level_ranks[depth].tolist() == [mc_sim.ranks[node] for node in nodes]
        expanded = buffers.expand_parents[depth - 1].tolist()
        assert expanded == sorted({node for node in range(mc_sim.n_nodes)
                                   if mc_sim.depths[node] == depth - 1 and mc_sim.children[node]})
        slots = buffers.level_parent_slots[depth].tolist()
        assert [expanded[slot] for slot in slots] == buffers.level_parents[depth].tolist()
    assert sorted(covered) == list(range(1, mc_sim.n_nodes))
    assert buffers.expand_parents[0].tolist() == [0]
    assert len(buffers.expand_parents[3]) == 1          # only [0,0,0] has children at depth 3


def test_buffers_are_cached_per_device_and_top_k(mc_sim):
    first = mc_sim.buffers("cpu", top_k=10)
    assert mc_sim.buffers(torch.device("cpu"), top_k=10) is first
    other = mc_sim.buffers("cpu", top_k=16)
    assert other is not first and other.top_k == 16
    for tensor in (first.parents, first.depths, first.tree_bits, first.medusa_index,
                   first.retrieve, first.retrieve_valid):
        assert tensor.device.type == "cpu"
    assert first.depths.tolist() == list(mc_sim.depths)
    assert first.parents.tolist() == list(mc_sim.parents)
    assert first.retrieve_valid.dtype == torch.bool
    with pytest.raises(EntmtpError, match="top 8"):
        mc_sim.buffers("cpu", top_k=8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_buffers_on_cuda(mc_sim):
    buffers = mc_sim.buffers("cuda", top_k=10)
    assert buffers.tree_bits.is_cuda and buffers.retrieve.is_cuda
    assert mc_sim.buffers(torch.device("cuda", torch.cuda.current_device()), top_k=10) is buffers
    assert torch.equal(buffers.tree_bits.cpu(), mc_sim.buffers("cpu", top_k=10).tree_bits)


def test_tree_is_frozen(mc_sim):
    with pytest.raises(AttributeError):
        mc_sim.name = "other"
    with pytest.raises(TypeError):
        mc_sim.metadata["model"] = "other"


# ---------------------------------------------------------------- validation

def write_document(tmp_path: Path, document, name: str = "bad.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def document_with(paths, **extra):
    return {"format": "entmtp-tree/1", "name": "bad", "paths": paths, **extra}


@pytest.mark.parametrize("document, message", [
    (document_with([[0], [0, 1, 0]]), r"prefix \[0, 1\]"),
    (document_with([[0], [1], [0]]), r"\[0\] is listed twice"),
    (document_with([[0], [-1]]), "negative rank -1"),
    (document_with([[0], [1.0]]), "not an integer"),
    (document_with([[0], [True]]), "not an integer"),
    (document_with([[0], []]), "path #1 is empty"),
    (document_with([[0], 1]), "must be a list of ranks"),
    (document_with({"0": 1}), "'paths' must be a list"),
    (document_with([[0]], extra_key=1), "unknown key.*'extra_key'"),
    ({"format": "entmtp-tree/1", "paths": [[0]]}, "missing key.*'name'"),
    (document_with([[0]], format="medusa"), "format is 'medusa'"),
    ([[0]], "top level must be a JSON object"),
])
def test_invalid_documents_name_the_file_and_problem(tmp_path, document, message):
    path = write_document(tmp_path, document)
    with pytest.raises(EntmtpError, match=message) as caught:
        load_tree(path)
    assert "bad.json" in str(caught.value)


def test_malformed_json_reports_the_line(tmp_path):
    path = write_document(tmp_path, '{\n  "format": "entmtp-tree/1",\n  "name": "x",\n  "paths": [[0],, [1]]\n}\n')
    with pytest.raises(EntmtpError, match="not valid JSON: line 4 column"):
        load_tree(path)


def test_missing_file(tmp_path):
    with pytest.raises(EntmtpError, match="does not exist"):
        load_tree(tmp_path / "absent.json")


def test_tree_from_paths_validates_with_the_tree_name():
    with pytest.raises(EntmtpError, match=r"tree 'mine'.*prefix \[2\]"):
        tree_from_paths("mine", [[0], [2, 0]])


def test_check_compatible(mc_sim):
    mc_sim.check_compatible(n_heads=4, top_k=10)
    deep = tree_from_paths("deep", [[0] * depth for depth in range(1, 6)])
    with pytest.raises(EntmtpError, match="tree 'deep' has depth 5 but the heads have 4"):
        deep.check_compatible(n_heads=4, top_k=10)
    with pytest.raises(EntmtpError, match=r"tree 'mc_sim_7b_63' uses rank 9 .*top 5"):
        mc_sim.check_compatible(n_heads=5, top_k=5)


# ------------------------------------------------------------- shipped trees

def test_named_lookup_uses_the_installed_package():
    names = list_trees()
    assert {"mc_sim_7b_63", "chain4", "tree16"} <= set(names)
    assert load_tree("mc_sim_7b_63") == load_tree(MC_SIM_FILE)


def test_unknown_name_lists_available_trees():
    with pytest.raises(EntmtpError, match="unknown tree 'nope'.*chain4.*mc_sim_7b_63.*tree16"):
        load_tree("nope")


def test_an_unknown_name_is_a_usage_mistake_but_a_bad_file_is_not(tmp_path):
    # `--tree nope` is a typo in the command line (exit 2); a path names a file whose problem is its own (exit 1).
    with pytest.raises(UsageError, match="unknown tree 'nope'") as caught:
        load_tree("nope")
    assert caught.value.exit_code == 2
    for path in (tmp_path / "absent.json", write_document(tmp_path, "{not json")):
        with pytest.raises(EntmtpError) as caught:
            load_tree(path)
        assert type(caught.value) is EntmtpError and caught.value.exit_code == 1


@pytest.mark.parametrize("paths, message", [
    ([[0], [10**12]], r"too large rank 1000000000000 \(0\.\.1023\)"),
    ([[2**64]], "too large rank"),
    ([[0] * depth for depth in range(1, 35)], "path #32 has 33 ranks; a tree is at most 32 deep"),
    ([[rank] for rank in range(3000)], "3000 paths; a tree has at most 2048"),
    ([[0] * 5000], "5000 ranks"),
])
def test_bounds_fail_fast_with_one_line(tmp_path, paths, message):
    """A huge rank or a huge tree is refused before any buffer is built (it used to overflow torch.tensor)."""
    with pytest.raises(EntmtpError, match=message) as caught:
        load_tree(write_document(tmp_path, document_with(paths)))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_largest_allowed_tree_builds_its_buffers():
    chain = [[0] * depth for depth in range(1, MAX_DEPTH + 1)]
    fans = [[1]] + [[1, rank] for rank in range(MAX_RANK + 1)] + [[2]]
    fans += [[2, rank] for rank in range(MAX_NODES - len(chain) - len(fans) - 1)]
    wide = tree_from_paths("wide", chain + fans + [[MAX_RANK]])
    assert wide.n_nodes == MAX_NODES + 1 and wide.max_depth == MAX_DEPTH
    assert wide.buffers("cpu", MAX_RANK + 1).tree_bits.shape == (MAX_NODES + 1, (MAX_NODES + 64) // 64)


@pytest.mark.parametrize("path", sorted(TREES_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_file_is_valid_and_named_after_its_file(path):
    tree = load_tree(path)
    assert tree.name == path.stem
    assert tree.max_depth <= 4 and tree.top_k_needed <= 10
    for key in ("model", "heads", "task", "built_by", "source"):
        assert tree.metadata.get(key), f"{path.name} metadata lacks {key}"


def test_small_shipped_trees():
    chain = load_tree(TREES_DIR / "chain4.json")
    assert chain.paths == ((0,), (0, 0), (0, 0, 0), (0, 0, 0, 0))
    assert chain.leaves == (4,) and chain.retrieve == ((0, 1, 2, 3, 4),)
    tree16 = load_tree(TREES_DIR / "tree16.json")
    assert tree16.n_nodes == 17 and len(tree16.paths) == 16 and tree16.max_depth <= 4


# ---------------------------------------------------------------- round trip

def test_json_round_trip(tmp_path, mc_sim):
    for tree in (mc_sim, random_tree(30, seed=3)):
        path = tmp_path / f"{tree.name}.json"
        save_tree(tree, path)
        again = load_tree(path)
        assert again == tree
        assert again.metadata == tree.metadata
        assert again.to_json() == tree.to_json()
        assert json.loads(path.read_text()) == tree.to_json()


# ------------------------------------------------------------------- render

def test_render_shows_nodes_table_and_stats(mc_sim):
    console = Console(record=True, width=120)
    console.print(render_tree(mc_sim, stats={(1, 0): 0.78, 5: 0.25}))
    text = console.export_text()
    assert "T = 64 nodes (root included), max depth 4, top_k needed 10, 42 leaves" in text
    assert "root (node 0)" in text
    assert "d1 r0 (node 1)  acc 0.78" in text
    assert "d2 r4 (node 15)" in text
    assert "d4 r1 (node 63)" in text
    assert "acc 0.25" in text
    for node in range(mc_sim.n_nodes):
        assert f"(node {node})" in text
    table_rows = [[cell.strip() for cell in line.split("│")[1:-1]]
                  for line in text.splitlines() if line.count("│") == 4]
    assert "┃ depth ┃ nodes ┃ leaves ┃" in text
    assert table_rows == [["0", "1", "0"], ["1", "10", "0"], ["2", "28", "18"],
                          ["3", "23", "22"], ["4", "2", "2"], ["all", "64", "42"]]
