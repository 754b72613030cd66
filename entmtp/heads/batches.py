"""What one training step of `entmtp heads train` reads: (sequence, position) pairs of the corpus,
their targets and path tokens, the heads' inputs (Hydra++: through the prefix layer), the heads'
logits, and the two losses (teacher: the base's distribution; hard: its greedy token)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from entmtp.heads.modules import MedusaHeads
from entmtp.heads.prefix import HydraPrefixHeads


def positions(sequences: list[dict]) -> torch.Tensor:
    """[P, 2] (sequence, position) pairs whose head-0 target (t + 2) exists."""
    rows = []
    for s_index, seq in enumerate(sequences):
        last = len(seq["tokens"]) - 2
        for t in range(seq["start"], last):
            rows.append((s_index, t))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 2)


def batch_targets(sequences, pairs, n_heads):
    """targets [n_heads, B] (-100 = none), path tokens [B, n_heads], and teacher_hidden
    [n_heads, B, H] fp32: the base's hidden state at t + 1 + i, whose LM-head softmax is its
    distribution of head i's target token (zeros where there is no target)."""
    targets, paths, teacher = [], [], []
    for s_index, t in pairs.tolist():
        seq = sequences[s_index]
        tokens, hidden = seq["tokens"], seq["hidden"]  # hidden [L - 1, H]: rows for tokens 0 .. L-2
        ahead = [int(tokens[t + 2 + i]) if t + 2 + i < len(tokens) else -100 for i in range(n_heads)]
        targets.append(ahead)
        # Tokens t+1 .. t+n_heads: the root and the drafts a Hydra head reads.
        paths.append([int(tokens[min(t + 1 + i, len(tokens) - 1)]) for i in range(n_heads)])
        teacher.append(torch.stack([hidden[min(t + 1 + i, len(hidden) - 1)] for i in range(n_heads)]).float())
    valid = torch.tensor(targets).T >= 0
    return torch.tensor(targets).T, torch.tensor(paths), torch.stack(teacher, 1) * valid.unsqueeze(-1)


def head_inputs(heads, sequences, pairs, model_config) -> torch.Tensor:
    """[B, H] fp32: what the heads read at each (sequence, position) pair: the base hidden
    state, or for Hydra++ the prefix layer's output, run once per distinct sequence over its
    positions 0..(the largest t drawn) (causal, so later positions do not matter)."""
    if not isinstance(heads, HydraPrefixHeads):
        return torch.stack([sequences[s]["hidden"][t].float() for s, t in pairs.tolist()])
    where, rows = [], []
    for s_index in pairs[:, 0].unique().tolist():
        at = (pairs[:, 0] == s_index).nonzero()[:, 0]            # this sequence's pairs in the batch
        positions = pairs[at, 1]
        hidden = sequences[s_index]["hidden"][:int(positions.max()) + 1].float().unsqueeze(0)  # [1, T, H]
        where.append(at)
        rows.append(heads.prefix.train_forward(hidden, model_config)[0, positions])
    # Back into the pairs' order (a gather, which keeps the graph).
    return torch.cat(rows)[torch.argsort(torch.cat(where))]


# Hydra++: a step's batch comes from this many positions per sequence, so that each prefix-layer
# pass over a whole sequence teaches the heads at several positions.
POSITIONS_PER_SEQUENCE = 32


def draw_pairs(pairs: torch.Tensor, cfg) -> torch.Tensor:
    """A batch of (sequence, position) pairs [B, 2]: uniform over all positions, or for Hydra++
    uniform over the positions of ceil(B / POSITIONS_PER_SEQUENCE) sequences drawn by size."""
    if cfg.kind != HydraPrefixHeads.kind:
        return pairs[torch.randint(0, len(pairs), (cfg.batch_size,))]
    n_seqs = -(-cfg.batch_size // POSITIONS_PER_SEQUENCE)
    chosen = pairs[torch.randint(0, len(pairs), (n_seqs,)), 0]
    pool = pairs[torch.isin(pairs[:, 0], chosen)]
    return pool[torch.randint(0, len(pool), (cfg.batch_size,))]


def head_logits(heads, hidden, paths, lm_head, embed) -> torch.Tensor:
    """[n_heads, B, V] logits of every head at a batch of positions (hidden: head_inputs)."""
    if isinstance(heads, MedusaHeads):
        return heads(hidden, lm_head)
    path_embeds = F.embedding(paths, embed)  # [B, n_heads, H]
    return torch.stack([heads.forward_paths(hidden, path_embeds[:, :i + 1], i, lm_head)
                        for i in range(heads.n_heads)])


def head_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_hidden: torch.Tensor, lm_head: torch.Tensor,
              loss: str) -> torch.Tensor:
    """logits [n, B, V]; targets [n, B] (-100 = none); teacher_hidden [n, B, H] (see batch_targets)."""
    # Softmaxes in fp32 also when the matmuls ran in bf16 (--train-dtype bf16).
    logits = logits.float()
    if loss == "hard":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    valid = (targets >= 0).float()
    with torch.no_grad():
        teacher = torch.softmax((teacher_hidden.to(lm_head.dtype) @ lm_head.T).float(), dim=-1)  # [n, B, V]
    soft = -(teacher * torch.log_softmax(logits, dim=-1)).sum(-1)              # [n, B]
    return (soft * valid).sum() / valid.sum().clamp(min=1)
