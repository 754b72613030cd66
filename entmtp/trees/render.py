"""Rich rendering of a draft tree: every node, plus a summary table.

Used by the CLI to show a tree and, after a run, the acceptance rate measured at
each node or at each (depth, rank) head slot.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree as RichTree

from entmtp.trees.tree import Tree

# Acceptance rates keyed by (depth, rank) head slot or by node index.
AcceptanceStats = Mapping[Union[tuple, int], float]


def _node_rate(tree: Tree, node: int, stats: AcceptanceStats) -> Optional[float]:
    # A node index wins over its (depth, rank) slot when both are given.
    if node in stats:
        return stats[node]
    return stats.get((tree.depths[node], tree.ranks[node]))


def _node_label(tree: Tree, node: int, stats: Optional[AcceptanceStats]) -> Text:
    if node == 0:
        label = Text("root (node 0)", style="bold")
    else:
        label = Text(f"d{tree.depths[node]} r{tree.ranks[node]} (node {node})")
    if stats:
        rate = _node_rate(tree, node, stats)
        if rate is not None:
            label.append(f"  acc {rate:.2f}", style="green" if rate >= 0.5 else "yellow")
    return label


def _summary_table(tree: Tree) -> Table:
    leaf_depths = [tree.depths[leaf] for leaf in tree.leaves]
    table = Table(title=f"tree {tree.name}", title_justify="left")
    table.add_column("depth", justify="right")
    table.add_column("nodes", justify="right")
    table.add_column("leaves", justify="right")
    for depth, count in enumerate(tree.nodes_per_depth):
        table.add_row(str(depth), str(count), str(leaf_depths.count(depth)))
    table.add_section()
    table.add_row("all", str(tree.n_nodes), str(len(tree.leaves)))
    return table


def render_tree(tree: Tree, stats: Optional[AcceptanceStats] = None) -> RenderableType:
    """A rich renderable: a header line, a per-depth table and the full node tree.

    stats: optional acceptance rates, keyed by (depth, rank) or by node index,
    shown next to the nodes they apply to.
    """
    header = Text(
        f"T = {tree.n_nodes} nodes (root included), max depth {tree.max_depth}, "
        f"top_k needed {tree.top_k_needed}, {len(tree.leaves)} leaves")
    rich_nodes = {0: RichTree(_node_label(tree, 0, stats), guide_style="dim")}
    # Canonical order puts parents first, so each parent's branch exists when a child is added.
    for node in range(1, tree.n_nodes):
        rich_nodes[node] = rich_nodes[tree.parents[node]].add(_node_label(tree, node, stats))
    return Group(header, _summary_table(tree), rich_nodes[0])


def render_bank(bank) -> RenderableType:
    """A bank (entmtp.schedule.bank.Bank): provenance, its trees, the ladder and both hulls."""
    prov = bank.provenance
    header = Text(
        f"bank {bank.name}: model {prov.get('model', {}).get('name')}, {prov.get('heads', {}).get('kind')} heads, "
        f"task {prov.get('task')} ({len(prov.get('prompt_ids', []))} calibration prompts), "
        f"{prov.get('dtype')} on {prov.get('device')}, calibrated {prov.get('date')}, EMA window {bank.window:g}")
    trees = Table(title="trees (accepted: de-biased by the self-rollouts; biased: the superset's prediction)",
                  title_justify="left")
    for column in ("tree", "nodes", "depth", "accepted", "biased", "ms/step", "tok/s (model)"):
        trees.add_column(column, justify="left" if column == "tree" else "right")
    trees.add_column("role", min_width=21)
    ladder_indices, thresholds = bank.ladder
    for i, tree in enumerate(bank.trees):
        marks = []
        if i == bank.static_best:
            marks.append("static-best")
        if i in ladder_indices:
            marks.append(f"ladder #{ladder_indices.index(i)}")
        trees.add_row(tree.name, str(tree.n_nodes - 1), str(tree.max_depth), f"{bank.accept[i]:.3f}",
                      f"{bank.accept_biased[i]:.3f}", f"{bank.step_ms[i]:.1f}",
                      f"{1000 * (bank.accept[i] + 1) / bank.step_ms[i]:.1f}", ", ".join(marks))
    ladder = Text("entropy ladder (paper): " + " | ".join(
        f"{bank.trees[i].name}" + (f" below {thresholds[k]:.3f} nats" if k < len(thresholds) else " above")
        for k, i in enumerate(ladder_indices)))
    hulls = Table(title="Pareto hulls over all grown candidates", title_justify="left")
    hulls.add_column("hull")
    hulls.add_column("(nodes, depth, value)")
    for name, points in bank.hulls.items():
        hulls.add_row("accepted length" if name == "accept" else "tok/s (model)",
                      " ".join(f"({n},{d},{v:g})" for n, d, v in points))
    scheduler, signal = bank.recommended.scheduler, bank.recommended.signal
    rates = bank.calibration_rates
    replay = Text(f"recommended (behind --method entmtp): {scheduler}" + (f", signal {signal}" if signal else "")
                  + "; modeled tok/s replayed on the calibration steps: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    cost = bank.cost
    points = ", ".join(f"n{p['nodes']}" + (f"d{p['depth']}" if p["nodes"] else "") + f" {p['ms']:.1f}"
                       for p in bank.cost_curve if not p.get("peek"))
    if cost:
        curve_line = Text(f"cost curve ({cost.get('origin')}): measured {cost.get('date')} on {cost.get('machine')} "
                          f"({cost.get('cpu_class') or 'gpu'}, {cost.get('threads')} threads, {cost.get('dtype')}); "
                          f"ms per step (made non-decreasing in nodes per depth): {points}")
    else:
        curve_line = Text(f"cost curve (built into the bank file, measured {prov.get('cost_date') or prov.get('date')} "
                          f"on {prov.get('machine')}): ms per step: {points}")
    probe = bank.probe
    probe_line = Text(f"probe: ridge lambda {probe.lam}, out-of-fold r {probe.out_of_fold_r} "
                      f"with {probe.target}; peek (head 0 then root-only) costs {bank.peek_ms:.1f} ms")
    return Group(header, curve_line, trees, ladder, replay, probe_line, hulls)
