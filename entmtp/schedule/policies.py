"""Tree policies: each step, the signals (entmtp.schedule.signals) pick a tree.

A policy holds the trees it can pick (their buffers are built once, so a switch
is a pointer swap in the decoder) and maps the signals to a tree index each step.
`OraclePolicy` is different: it verifies the union of its trees and, in
hindsight, keeps what the best tree for that step would have accepted.
"""
from __future__ import annotations

import bisect
from typing import Optional, Sequence

import torch

from entmtp.errors import UsageError
from entmtp.schedule.signals import SIGNALS, Signals
from entmtp.trees.tree import Tree

# --------------------------------------------------------------------------- #
# Policies
# --------------------------------------------------------------------------- #


class TreePolicy:
    """Chooses one of `trees` per step. `hindsight` policies (the oracle) verify
    `verify_tree` and cut the outcome afterwards with `settle`."""

    name = "policy"
    hindsight = False
    peeks = False
    peek_ms = 0.0   # modeled cost of a peek that ends in the root-only tree
    probe: Optional[torch.Tensor] = None  # [H + 1] weights and bias of the probe signal, fp32

    def __init__(self, trees: Sequence[Tree], step_ms: Sequence[Optional[float]]):
        if not trees:
            raise UsageError("a tree policy needs at least one tree")
        self.trees = tuple(trees)
        self.step_ms = tuple(step_ms)   # modeled ms per step of each tree (None: unknown)

    def reset(self) -> None:
        pass

    def choose(self, signals: Signals) -> int:
        raise NotImplementedError


class StaticPolicy(TreePolicy):
    """Always the same tree (`static` with a named tree, `static-best` with the bank's best)."""

    def __init__(self, tree: Tree, step_ms: Optional[float], name: str = "static"):
        super().__init__([tree], [step_ms])
        self.name = name

    def choose(self, signals: Signals) -> int:
        return 0


class BinnedPolicy(TreePolicy):
    """A signal's value -> bin (edges ascending) -> a tree index, a table lookup.

    choice_by_bin[b] is the tree for bin b (len(edges) + 1 bins); `unseen` is the
    tree while the signal has no value yet (the first steps of a prompt)."""

    def __init__(self, name: str, trees: Sequence[Tree], step_ms: Sequence[Optional[float]],
                 signal: str, edges: Sequence[float], choice_by_bin: Sequence[int], unseen: int):
        super().__init__(trees, step_ms)
        if signal not in SIGNALS:
            raise UsageError(f"unknown signal {signal!r}; available: {', '.join(SIGNALS)}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise UsageError(f"{name}: thresholds must be strictly increasing, got {list(edges)}")
        if len(choice_by_bin) != len(edges) + 1:
            raise UsageError(f"{name}: {len(edges)} thresholds need {len(edges) + 1} trees, "
                             f"got {len(choice_by_bin)}")
        self.name = name
        self.signal = signal
        self.edges = tuple(float(e) for e in edges)
        self.choice_by_bin = tuple(choice_by_bin)
        self.unseen = unseen

    def choose(self, signals: Signals) -> int:
        value = signals.get(self.signal)
        if value is None:
            return self.unseen
        return self.choice_by_bin[bisect.bisect_right(self.edges, value)]


class JointPolicy(TreePolicy):
    """Two signals binned jointly: choice[b_entropy][b_accept]; entropy alone until
    the accept EMA exists."""

    def __init__(self, name: str, trees: Sequence[Tree], step_ms: Sequence[Optional[float]],
                 edges: dict[str, Sequence[float]], choice: Sequence[Sequence[int]],
                 entropy_only: Sequence[int], unseen: int):
        super().__init__(trees, step_ms)
        self.name = name
        self.entropy_edges = tuple(edges["entropy"])
        self.accept_edges = tuple(edges["accept"])
        self.choice = tuple(tuple(row) for row in choice)
        self.entropy_only = tuple(entropy_only)
        self.unseen = unseen

    def choose(self, signals: Signals) -> int:
        if signals.entropy is None:
            return self.unseen
        e = bisect.bisect_right(self.entropy_edges, signals.entropy)
        if signals.accept is None:
            return self.entropy_only[e]
        return self.choice[e][bisect.bisect_right(self.accept_edges, signals.accept)]


DRAFT = -2  # "run head 0 first, then pick the tree" (PeekPolicy.choose)


class PeekPolicy(TreePolicy):
    """Two phases per step: the decoder first runs head 0 at this step's root (work
    every drafting tree needs anyway), then `refine` picks the tree from the bin of
    head 0's top-1 probability (`now_edges` ascending, one tree index per bin). If
    it picks the root-only tree the peek was paid for nothing: `peek_ms` models it."""

    peeks = True

    def __init__(self, name: str, trees: Sequence[Tree], step_ms: Sequence[Optional[float]],
                 now_edges: Sequence[float], now_choice: Sequence[int]):
        super().__init__(trees, step_ms)
        self.name = name
        if any(b <= a for a, b in zip(now_edges, now_edges[1:])) or len(now_choice) != len(now_edges) + 1:
            raise UsageError(f"{name}: confidence bins must be increasing with one tree per bin")
        self.now_edges = tuple(now_edges)
        self.now_choice = tuple(now_choice)

    def choose(self, signals: Signals) -> int:
        return DRAFT

    def refine(self, confidence: float) -> int:
        return self.now_choice[bisect.bisect_right(self.now_edges, confidence)]


class OraclePolicy(TreePolicy):
    """Analysis only: verify the union of the bank's trees, then keep what the
    tree with the best (accepted + 1) / modeled step time would have accepted.
    Its speed is modeled (the sum of the chosen trees' step times), never measured."""

    name = "oracle"
    hindsight = True

    def __init__(self, trees: Sequence[Tree], step_ms: Sequence[float], union: Tree):
        super().__init__(trees, step_ms)
        if any(ms is None for ms in step_ms):
            raise UsageError("the oracle needs a modeled step time for every tree")
        self.verify_tree = union
        self._path_sets = [set(t.paths) for t in self.trees]

    def choose(self, signals: Signals) -> int:
        return -1   # the decoder verifies `verify_tree`

    def settle(self, accepted_ranks: tuple[int, ...]) -> tuple[int, int]:
        """Accepted rank path in the union -> (best tree index, its accepted length)."""
        best, best_rate, best_len = 0, -1.0, 0
        for index, (paths, ms) in enumerate(zip(self._path_sets, self.step_ms)):
            length = 0
            while length < len(accepted_ranks) and accepted_ranks[:length + 1] in paths:
                length += 1
            rate = (length + 1) / ms
            if rate > best_rate:
                best, best_rate, best_len = index, rate, length
        return best, best_len
