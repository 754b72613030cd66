"""Draft trees as data: JSON files validated into frozen `Tree` objects.

A tree is Medusa's list of paths (its `medusa_choices`): a path is a list of top-k
ranks, one per depth, so `[0, 2]` is the rank-2 token of head 1 placed under the
rank-0 token of head 0. The root (the base model's own next token) is implicit.
Paths are kept in canonical order, sorted by (length, path); node 0 is the root
and node i >= 1 is `paths[i - 1]`. That order puts every parent before its
children and keeps the nodes of one depth contiguous.

Everything derived from the paths is computed once: host-side tuples when the
Tree is built, torch tensors (`TreeBuffers`) once per (device, top_k) and cached
on the tree.
"""
from __future__ import annotations

import dataclasses
import reprlib
import types
from typing import Any, Mapping, Optional, Sequence

import torch

from entmtp.errors import EntmtpError
from entmtp.reference import tree_bits_from_parents

TREE_FORMAT = "entmtp-tree/1"
SHIPPED_TREES_PACKAGE = "entmtp.trees_data"
_DOCUMENT_KEYS = {"format", "name", "paths", "metadata"}
_REQUIRED_DOCUMENT_KEYS = ("format", "name", "paths")
# Bounds, so that a typo or a hostile file fails at once rather than building huge buffers
# (path_nodes is nodes x depth): real trees have at most a few hundred nodes, one depth per
# head (Medusa and Hydra use 3-5) and ranks inside the heads' top-k (10).
MAX_NODES, MAX_DEPTH, MAX_RANK = 2048, 32, 1023   # paths (root not counted), ranks per path, largest rank
MAX_NAME = 100   # names are printed in tables, traces and one-line messages
_SHORT = reprlib.Repr()   # values quoted in messages: a few items and levels, never a page
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 8
_SHORT.maxstring = _SHORT.maxother = 40
_SHORT.maxlong = 24
short_repr = _SHORT.repr


def check_name(name: Any, what: str) -> str:
    if not (isinstance(name, str) and name.strip() and len(name) <= MAX_NAME and name.isprintable()):
        raise EntmtpError(f"{what} must be 1-{MAX_NAME} printable characters, not {short_repr(name)}")
    return name


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def _canonical_paths(raw_paths: Any, where: str) -> tuple[tuple[int, ...], ...]:
    """Validate a list of paths and return it sorted by (length, path).

    `where` names the tree or file in every message ("tree file x.json").
    """
    if not isinstance(raw_paths, (list, tuple)):
        raise EntmtpError(f"{where}: 'paths' must be a list of paths, not {type(raw_paths).__name__}")
    if len(raw_paths) > MAX_NODES:
        raise EntmtpError(f"{where}: {len(raw_paths)} paths; a tree has at most {MAX_NODES}")
    # An empty list is the root-only tree: a step that drafts nothing, i.e. a plain
    # decode step inside the speculative loop (the cheapest member of a tree bank).
    paths: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    for position, raw in enumerate(raw_paths):
        if not isinstance(raw, (list, tuple)):
            raise EntmtpError(
                f"{where}: path #{position} must be a list of ranks, not {type(raw).__name__} ({short_repr(raw)})")
        if not raw:
            raise EntmtpError(f"{where}: path #{position} is empty; the root is implicit and not listed")
        if len(raw) > MAX_DEPTH:
            raise EntmtpError(f"{where}: path #{position} has {len(raw)} ranks; a tree is at most {MAX_DEPTH} deep")
        for rank in raw:
            # bool is an int subclass, and JSON 1.0 parses as float: both are mistakes here.
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise EntmtpError(f"{where}: path #{position} {short_repr(list(raw))} has a rank that is "
                                  f"not an integer: {short_repr(rank)}")
            if not 0 <= rank <= MAX_RANK:
                raise EntmtpError(f"{where}: path #{position} {short_repr(list(raw))} has a "
                                  f"{'negative' if rank < 0 else 'too large'} rank {short_repr(rank)} (0..{MAX_RANK})")
        path = tuple(raw)
        if path in seen:
            raise EntmtpError(f"{where}: path {short_repr(list(path))} is listed twice")
        seen.add(path)
        paths.append(path)
    for path in paths:
        for cut in range(1, len(path)):
            if path[:cut] not in seen:
                raise EntmtpError(
                    f"{where}: path {short_repr(list(path))} needs its prefix {short_repr(list(path[:cut]))}, "
                    "which is not in the tree (every prefix of a path must be listed)")
    return tuple(sorted(paths, key=lambda p: (len(p), p)))


def _freeze_json(value: Any) -> Any:
    """JSON value -> read-only equivalent (dict -> MappingProxyType, list -> tuple)."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({str(k): _freeze_json(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze_json(v) for v in value)
    return value


def _thaw_json(value: Any) -> Any:
    """Inverse of `_freeze_json`, for writing JSON."""
    if isinstance(value, Mapping):
        return {k: _thaw_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw_json(v) for v in value]
    return value


# --------------------------------------------------------------------------- #
# Pure structure functions
# --------------------------------------------------------------------------- #


def ancestor_bits(parents: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Ancestor-or-self bitmask int64 [T, ceil(T/64)] (CPU) of the tree with
    parent array `parents` [T] (root -1, parents[i] < i): bit (j % 64) of word
    j // 64 in row i is set iff node j is node i or one of its ancestors, the
    mask format of `entmtp.ops.tree_attention`. The reference builds it."""
    return tree_bits_from_parents(torch.as_tensor(parents, dtype=torch.long).cpu())


# --------------------------------------------------------------------------- #
# Device buffers
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True, eq=False)
class TreeBuffers:
    """Torch tensors of one tree for one (device, top_k); built by `Tree.buffers`.

    T = n_nodes (root included), W = ceil(T/64), L = number of leaves,
    D = max_depth. All index tensors are int64 on `device`.
    """

    device: torch.device
    top_k: int                       # width of each head's top-k list the candidates come from
    n_nodes: int                     # T
    max_depth: int                   # D
    parents: torch.Tensor            # [T] parent node, root -1
    depths: torch.Tensor             # [T] depth, root 0; + committed length = position ids
    tree_bits: torch.Tensor          # [T, W] ancestor-or-self bitmask (see `ancestor_bits`)
    medusa_index: torch.Tensor       # [T] index into [root, head0 top-k, head1 top-k, ...]
    leaves: torch.Tensor             # [L] leaf nodes, ascending
    retrieve: torch.Tensor           # [L, D+1] root-to-leaf node chains, padded with -1
    retrieve_valid: torch.Tensor     # [L, D+1] bool, False exactly on the padding
    retrieve_lengths: torch.Tensor   # [L] valid entries per row (leaf depth + 1)
    path_nodes: torch.Tensor         # [T, D+1] node i's chain root..i, padded with -1
    # Hydra's level-by-level proposal (one head per depth); keys are depths.
    # For depth d in 1..D (N_d nodes at depth d, E_{d-1} parents at depth d-1 with children):
    level_nodes: Mapping[int, torch.Tensor]         # d -> [N_d] nodes at depth d, ascending
    level_parents: Mapping[int, torch.Tensor]       # d -> [N_d] their parent nodes
    level_ranks: Mapping[int, torch.Tensor]         # d -> [N_d] their ranks in head d-1's top-k
    level_parent_slots: Mapping[int, torch.Tensor]  # d -> [N_d] row of the parent in expand_parents[d-1]
    # For parent depth p in 0..D-1: the depth-p nodes that have children, ascending.
    # Head p runs only on these; its top-k ids [E_p, top_k] gathered at
    # (level_parent_slots[p+1], level_ranks[p+1]) give the depth-(p+1) tokens.
    expand_parents: Mapping[int, torch.Tensor]      # p -> [E_p]


# --------------------------------------------------------------------------- #
# The tree
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Tree:
    """A validated draft tree. Construct with `tree_from_paths` or `load_tree`.

    Direct construction `Tree(name, paths, metadata)` also validates and
    canonicalises. Equality compares name, paths and metadata.
    """

    name: str
    paths: tuple[tuple[int, ...], ...]
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False, repr=False)

    # Derived host-side structure, indexed by node (T = n_nodes, node 0 = root).
    n_nodes: int = dataclasses.field(init=False, compare=False)
    parents: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)  # [T], root -1
    depths: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)   # [T], root 0
    ranks: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)    # [T], root -1
    children: tuple[tuple[int, ...], ...] = dataclasses.field(init=False, compare=False, repr=False)
    max_depth: int = dataclasses.field(init=False, compare=False)
    top_k_needed: int = dataclasses.field(init=False, compare=False)  # max rank + 1 (0: root-only)
    chain_depth: int = dataclasses.field(init=False, compare=False)   # depth of the all-0 chain in the tree
    nodes_per_depth: tuple[int, ...] = dataclasses.field(init=False, compare=False)  # [D+1], [0] = 1
    leaves: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)   # [L] ascending
    # [L][D+1] node chains root..leaf padded with -1; [L] valid lengths (leaf depth + 1).
    retrieve: tuple[tuple[int, ...], ...] = dataclasses.field(init=False, compare=False, repr=False)
    # [T][D+1] every node's chain root..node padded with -1 (retrieve = these rows at the leaves).
    path_nodes: tuple[tuple[int, ...], ...] = dataclasses.field(init=False, compare=False, repr=False)
    retrieve_lengths: tuple[int, ...] = dataclasses.field(init=False, compare=False, repr=False)
    _buffer_cache: dict = dataclasses.field(
        init=False, compare=False, repr=False, hash=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name, "tree name")
        where = f"tree {self.name!r}"
        if not isinstance(self.metadata, Mapping):
            raise EntmtpError(f"{where}: metadata must be a mapping, not {type(self.metadata).__name__}")
        paths = _canonical_paths(self.paths, where)
        set_field = object.__setattr__  # frozen: derived fields are set once, here
        set_field(self, "paths", paths)
        set_field(self, "metadata", _freeze_json(self.metadata))

        node_of_path = {path: node for node, path in enumerate(paths, start=1)}
        parents = (-1,) + tuple(node_of_path.get(path[:-1], 0) for path in paths)
        depths = (0,) + tuple(len(path) for path in paths)
        ranks = (-1,) + tuple(path[-1] for path in paths)
        n_nodes = len(parents)
        children: list[list[int]] = [[] for _ in range(n_nodes)]
        for node in range(1, n_nodes):
            children[parents[node]].append(node)
        max_depth = max(depths)
        # Length of the all-rank-0 chain [0], [0, 0], ...: the greedy path whose
        # head probabilities give the "path value" confidence signal.
        chain_depth = 0
        while (0,) * (chain_depth + 1) in node_of_path:
            chain_depth += 1
        nodes_per_depth = [0] * (max_depth + 1)
        for depth in depths:
            nodes_per_depth[depth] += 1
        leaves = tuple(node for node in range(n_nodes) if not children[node])
        # Every node's chain root..node, padded with -1 to D+1 entries.
        path_nodes = []
        for node in range(n_nodes):
            chain = [node]
            while parents[chain[-1]] != -1:
                chain.append(parents[chain[-1]])
            path_nodes.append(tuple(chain[::-1]) + (-1,) * (max_depth + 1 - len(chain)))
        retrieve = [path_nodes[leaf] for leaf in leaves]

        set_field(self, "n_nodes", n_nodes)
        set_field(self, "parents", parents)
        set_field(self, "depths", depths)
        set_field(self, "ranks", ranks)
        set_field(self, "children", tuple(tuple(c) for c in children))
        set_field(self, "max_depth", max_depth)
        set_field(self, "top_k_needed", max(ranks) + 1)
        set_field(self, "chain_depth", chain_depth)
        set_field(self, "nodes_per_depth", tuple(nodes_per_depth))
        set_field(self, "leaves", leaves)
        set_field(self, "path_nodes", tuple(path_nodes))
        set_field(self, "retrieve", tuple(retrieve))
        set_field(self, "retrieve_lengths", tuple(depths[leaf] + 1 for leaf in leaves))

    # ---------------------------------------------------------------- checks

    def check_compatible(self, n_heads: int, top_k: int) -> None:
        """Raise EntmtpError unless heads with `n_heads` heads of `top_k` ranks can fill this tree."""
        if self.max_depth > n_heads:
            raise EntmtpError(
                f"tree {self.name!r} has depth {self.max_depth} but the heads have {n_heads}")
        self._check_top_k(top_k)

    def _check_top_k(self, top_k: int) -> None:
        if self.top_k_needed > top_k:
            worst = next(path for path in self.paths if max(path) == self.top_k_needed - 1)
            raise EntmtpError(
                f"tree {self.name!r} uses rank {self.top_k_needed - 1} (path {list(worst)!r}) "
                f"but the heads propose only the top {top_k}")

    # --------------------------------------------------------------- buffers

    def buffers(self, device: torch.device | str, top_k: int) -> TreeBuffers:
        """Device tensors for this tree, built on first use and cached per (device, top_k).

        top_k is the width of each head's top-k list (it fixes `medusa_index`);
        it must exceed every rank in the tree.
        """
        device = _normalized_device(device)
        key = (str(device), int(top_k))
        cached = self._buffer_cache.get(key)
        if cached is not None:
            return cached
        self._check_top_k(top_k)
        built = self._build_buffers(device, int(top_k))
        self._buffer_cache[key] = built
        return built

    def _build_buffers(self, device: torch.device, top_k: int) -> TreeBuffers:
        def as_tensor(values: Sequence, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device)

        depths, parents, ranks = self.depths, self.parents, self.ranks
        medusa_index = [0] + [1 + (depths[node] - 1) * top_k + ranks[node]
                              for node in range(1, self.n_nodes)]
        level_nodes, level_parents, level_ranks, level_parent_slots = {}, {}, {}, {}
        expand_parents = {}
        for depth in range(1, self.max_depth + 1):
            nodes = [node for node in range(self.n_nodes) if depths[node] == depth]
            # Distinct parents in ascending order; each node's slot is its parent's row there.
            expanded = sorted({parents[node] for node in nodes})
            slot_of = {parent: slot for slot, parent in enumerate(expanded)}
            level_nodes[depth] = as_tensor(nodes)
            level_parents[depth] = as_tensor([parents[node] for node in nodes])
            level_ranks[depth] = as_tensor([ranks[node] for node in nodes])
            level_parent_slots[depth] = as_tensor([slot_of[parents[node]] for node in nodes])
            expand_parents[depth - 1] = as_tensor(expanded)
        return TreeBuffers(
            device=device,
            top_k=top_k,
            n_nodes=self.n_nodes,
            max_depth=self.max_depth,
            parents=as_tensor(parents),
            depths=as_tensor(depths),
            tree_bits=ancestor_bits(parents).to(device),
            medusa_index=as_tensor(medusa_index),
            leaves=as_tensor(self.leaves),
            retrieve=as_tensor(self.retrieve),
            retrieve_valid=as_tensor(self.retrieve, torch.int64) >= 0,
            retrieve_lengths=as_tensor(self.retrieve_lengths),
            path_nodes=as_tensor(self.path_nodes),
            level_nodes=types.MappingProxyType(level_nodes),
            level_parents=types.MappingProxyType(level_parents),
            level_ranks=types.MappingProxyType(level_ranks),
            level_parent_slots=types.MappingProxyType(level_parent_slots),
            expand_parents=types.MappingProxyType(expand_parents),
        )

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict:
        """The tree as an `entmtp-tree/1` document (paths in canonical order)."""
        return {
            "format": TREE_FORMAT,
            "name": self.name,
            "paths": [list(path) for path in self.paths],
            "metadata": _thaw_json(self.metadata),
        }


def _normalized_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    # "cuda" and "cuda:0" are the same place when 0 is current; key the cache by the explicit index.
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# --------------------------------------------------------------------------- #
# Construction, loading, saving
# --------------------------------------------------------------------------- #


def tree_from_paths(name: str, paths: Sequence[Sequence[int]],
                    metadata: Optional[Mapping[str, Any]] = None) -> Tree:
    """Validate `paths` (any order) into a Tree."""
    return Tree(name=name, paths=paths, metadata=dict(metadata or {}))


def _tree_from_document(document: Any, where: str) -> Tree:
    if not isinstance(document, dict):
        raise EntmtpError(f"{where}: the top level must be a JSON object, not {type(document).__name__}")
    unknown = sorted(set(document) - _DOCUMENT_KEYS)
    if unknown:
        raise EntmtpError(
            f"{where}: unknown key(s) {', '.join(map(short_repr, unknown[:8]))}; "
            f"allowed: {', '.join(sorted(_DOCUMENT_KEYS))}")
    missing = [key for key in _REQUIRED_DOCUMENT_KEYS if key not in document]
    if missing:
        raise EntmtpError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    if document["format"] != TREE_FORMAT:
        raise EntmtpError(f"{where}: format is {short_repr(document['format'])}, expected {TREE_FORMAT!r}")
    name = check_name(document["name"], f"{where}: 'name'")
    metadata = document.get("metadata", {})
    if not isinstance(metadata, dict):
        raise EntmtpError(f"{where}: 'metadata' must be an object, not {type(metadata).__name__}")
    # Validate here too so that messages name the file rather than only the tree.
    paths = _canonical_paths(document["paths"], where)
    return Tree(name=name, paths=paths, metadata=metadata)


# --------------------------------------------------------------------------- #
# Candidates
# --------------------------------------------------------------------------- #


def medusa_candidates(root_token: torch.Tensor, head_topk_ids: torch.Tensor,
                      buffers: TreeBuffers) -> torch.Tensor:
    """Token of every tree node, Medusa style: node (r_1, .., r_d) takes rank r_d of head d-1.

    root_token: int64 [] or [1], the base model's next token.
    head_topk_ids: int64 [n_heads, top_k], each head's top-k token ids (rank order).
    Returns int64 [T]: node i's token. Pure gather; no host synchronisation.
    """
    if root_token.numel() != 1:
        raise ValueError(f"root_token must hold one token, got shape {tuple(root_token.shape)}")
    if head_topk_ids.dim() != 2 or head_topk_ids.shape[1] != buffers.top_k:
        raise ValueError(
            f"head_topk_ids must be [n_heads, {buffers.top_k}] for these buffers, "
            f"got {tuple(head_topk_ids.shape)}")
    if head_topk_ids.shape[0] < buffers.max_depth:
        raise ValueError(
            f"tree has depth {buffers.max_depth} but head_topk_ids has {head_topk_ids.shape[0]} heads")
    # [1 + n_heads * top_k]: root, then head 0's top-k, head 1's top-k, ...
    flat_candidates = torch.cat([root_token.reshape(1).to(head_topk_ids.dtype), head_topk_ids.reshape(-1)])
    return flat_candidates[buffers.medusa_index]
