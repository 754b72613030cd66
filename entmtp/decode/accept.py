"""Accepting a verified tree: how (VerifyConfig: greedy, typical, exact sampling) and
what came of it (StepOutcome); the sampling modes' walks, which the greedy path
(one ops.tree_accept plus one host read, in SpeculativeDecoder.accept) does not need."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from entmtp.errors import UsageError

VERIFY_MODES = ("greedy", "typical", "sample")


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """How drafted tokens are accepted.

    greedy: exact (the output equals plain greedy decoding);
    typical: Medusa's typical acceptance, p(x) > min(epsilon, alpha * exp(-H)) at
      temperature T: APPROXIMATE, it does not preserve the base distribution;
    sample: exact sampling at temperature T > 0 by recursive rejection over siblings.
    """

    mode: str = "greedy"
    temperature: float = 0.0
    epsilon: float = 0.09
    alpha: float = 0.3

    def __post_init__(self):
        if self.mode not in VERIFY_MODES:
            raise UsageError(f"verification mode must be one of {', '.join(VERIFY_MODES)}, not {self.mode!r}")
        if self.mode != "greedy" and self.temperature <= 0:
            raise UsageError(f"{self.mode} verification needs --temperature > 0")


@dataclasses.dataclass
class StepOutcome:
    path: list[int]           # accepted node indices, root first
    bonus: torch.Tensor       # [] the base model's next token after the path (next root)
    emitted: list[int]        # the accepted drafted tokens, then the bonus token
    slots: torch.Tensor       # int64 [len(path)] the path on the device, for kv_commit
    along_path: list[list[float]] = dataclasses.field(default_factory=list)  # each per-node value, path nodes
    extras: list[float] = dataclasses.field(default_factory=list)            # the scalars read with it


def accept_by_rejection(tokens: torch.Tensor, logits: torch.Tensor, children: Sequence[Sequence[int]],
                        temperature: float, generator: Optional[torch.Generator]) -> StepOutcome:
    """Walk down from the root; at each node try its children in rank order.

    Child x is accepted with probability p(x) / (mass left), else p(x) is
    removed from the residual; if every child is rejected the bonus is drawn
    from the residual. Each drafted token is a point mass, so this samples
    exactly from the base distribution p at every position.
    """
    token_list = tokens.tolist()
    node, path = 0, [0]
    while True:
        probs = torch.softmax(logits[node].float() / temperature, dim=-1)
        chosen = None
        for child in children[node]:
            x = token_list[child]
            mass = probs.sum()
            if mass <= 0:
                break
            u = torch.rand((), generator=generator, device=probs.device)
            if u * mass < probs[x]:
                chosen = child
                break
            probs[x] = 0.0
        if chosen is None:
            bonus = torch.multinomial(probs / probs.sum(), 1, generator=generator)[0]
            return StepOutcome(path, bonus, [token_list[i] for i in path[1:]] + [int(bonus)],
                               torch.tensor(path, dtype=torch.long, device=tokens.device))
        node = chosen
        path.append(node)


def read_beside(outcome: StepOutcome, per_node: Sequence[torch.Tensor],
                extras: Sequence[torch.Tensor]) -> StepOutcome:
    """Sampling modes: the per-node values and extras in one more read."""
    if per_node or extras:
        at = outcome.slots
        read = torch.cat([v[at].double() for v in per_node] + [e.reshape(1).double() for e in extras]).tolist()
        n = len(outcome.path)
        outcome.along_path = [read[i * n:(i + 1) * n] for i in range(len(per_node))]
        outcome.extras = read[len(per_node) * n:]
    return outcome
