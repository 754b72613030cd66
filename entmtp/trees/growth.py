"""Tree statistics from calibration rollouts: the superset tree, per-node acceptance, greedy growth.

Nodes are rank paths: (r0, r1, ...) is the r0-th guess of head 0, then the r1-th
guess of head 1 below it. Under greedy verification a node of any tree is
accepted exactly when its rank path is a prefix of the step's accepted path, so
one rollout of a large superset scores every smaller tree."""
from __future__ import annotations

from typing import Sequence

from entmtp.trees.tree import Tree, tree_from_paths

SUPERSET_DEPTH_DECAY = 0.7


def superset_tree(n_heads: int, top_k: int, n_nodes: int) -> Tree:
    """The n_nodes paths with the highest prior prod_i 1/(rank_i + 1) * decay^depth.

    The prior falls along every path, so the top-n set is prefix-closed (ties
    broken by (depth, path), parents first)."""
    paths: list[tuple[int, ...]] = []
    frontier = [(r,) for r in range(top_k)]
    while frontier:
        paths.extend(frontier)
        frontier = [p + (r,) for p in frontier if len(p) < n_heads for r in range(top_k)
                    if _prior(p + (r,)) >= 1e-4]

    ranked = sorted(paths, key=lambda p: (-_prior(p), len(p), p))[:n_nodes]
    return tree_from_paths(f"superset{len(ranked)}", ranked,
                           {"built_by": f"top {n_nodes} paths by prior prod 1/(rank+1) * "
                                        f"{SUPERSET_DEPTH_DECAY}^depth"})


def _prior(path: tuple[int, ...]) -> float:
    value = SUPERSET_DEPTH_DECAY ** len(path)
    for rank in path:
        value /= rank + 1
    return value


def node_acceptance(accepted_paths: Sequence[Sequence[int]], nodes: Sequence[tuple[int, ...]]) -> dict:
    """Per node (rank path): the fraction of steps whose accepted path passes through it."""
    counts = dict.fromkeys(nodes, 0)
    for accepted in accepted_paths:
        accepted = tuple(accepted)
        for cut in range(1, len(accepted) + 1):
            prefix = accepted[:cut]
            if prefix in counts:
                counts[prefix] += 1
    total = max(len(accepted_paths), 1)
    return {node: count / total for node, count in counts.items()}


def grow_trees(probability: dict, max_depth: int, max_nodes: int) -> list[tuple[tuple[int, ...], ...]]:
    """Greedy node-by-node growth: add the frontier node (child of the tree, depth
    <= max_depth, known to the statistics) with the highest acceptance
    probability; returns the path tuple after each addition (sizes 1..)."""
    tree: list[tuple[int, ...]] = []
    inside: set[tuple[int, ...]] = set()
    grown = []
    while len(tree) < max_nodes:
        frontier = [p for p in probability if p not in inside and len(p) <= max_depth
                    and (len(p) == 1 or p[:-1] in inside)]
        if not frontier:
            break
        best = max(frontier, key=lambda p: (probability[p], -sum(p), -len(p)))
        tree.append(best)
        inside.add(best)
        grown.append(tuple(tree))
    return grown


def path_key(path: Sequence[int]) -> str:
    return ",".join(map(str, path))


def parse_path_key(key: str) -> tuple[int, ...]:
    return tuple(int(part) for part in key.split(",")) if key else ()


def accepted_in(tree_paths: set, ranks: Sequence[int]) -> int:
    """Accepted length a tree would have had, given the superset's accepted rank path."""
    length = 0
    while length < len(ranks) and tuple(ranks[:length + 1]) in tree_paths:
        length += 1
    return length
