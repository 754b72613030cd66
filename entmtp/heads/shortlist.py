"""A draft vocabulary: the heads' LM head restricted to the N tokens that occur
most in the heads' training prompts.

Drafting projects every head's hidden state onto the whole vocabulary (49,152 rows
for the default model: a 56 MB weight read per level), although the tokens the
heads guess right come from a much smaller set. Restricting that projection to a
shortlist changes only which tokens are drafted, never the output (verification
is unchanged), so it stays exact; it trades acceptance (a token outside the list
cannot be drafted) for step time. `entmtp heads shortlist` picks N by coverage on
the recorded training prompts and stores the list beside the heads.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional

import torch

from entmtp.errors import EntmtpError
from entmtp.jsonfile import read_json, write_json

FORMAT_ID = "entmtp-draft-vocab/1"
FILE_NAME = "draft_vocab.json"


@dataclasses.dataclass(frozen=True)
class DraftVocab:
    ids: tuple[int, ...]      # token ids, most frequent first
    coverage: float           # share of the counted corpus tokens that are in the list
    source: str               # what was counted

    def __post_init__(self) -> None:
        if not self.ids or len(set(self.ids)) != len(self.ids) or min(self.ids) < 0:
            raise EntmtpError("a draft vocabulary needs distinct, non-negative token ids")

    def truncated(self, n: int) -> "DraftVocab":
        """The n most frequent ids (coverage is then unknown: NaN)."""
        if n >= len(self.ids):
            return self
        return DraftVocab(self.ids[:n], float("nan"), self.source)


def count_tokens(token_lists: Iterable[list[int]], vocab_size: int) -> torch.Tensor:
    """Occurrences of every token id: int64 [vocab_size]."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for ids in token_lists:
        if ids:
            counts += torch.bincount(torch.tensor(ids, dtype=torch.int64), minlength=vocab_size)[:vocab_size]
    return counts


def choose(counts: torch.Tensor, size: Optional[int] = None, coverage: float = 0.97, multiple: int = 256,
           source: str = "") -> DraftVocab:
    """The `size` most counted ids, or the fewest (a multiple of `multiple`) whose
    counts cover `coverage` of all counted tokens. Ties go to the lower id."""
    total = int(counts.sum())
    if total == 0:
        raise EntmtpError("no tokens were counted for the draft vocabulary")
    # Stable descending sort: equal counts keep id order.
    order = torch.sort(counts, descending=True, stable=True).indices
    if size is None:
        covered = torch.cumsum(counts[order], 0)
        size = int(torch.searchsorted(covered, torch.tensor(coverage * total, dtype=covered.dtype))) + 1
        size = min(-(-size // multiple) * multiple, counts.numel())
    size = max(1, min(size, counts.numel()))
    ids = order[:size]
    return DraftVocab(tuple(int(i) for i in ids), float(counts[ids].sum()) / total, source)


def save(vocab: DraftVocab, folder: Path) -> Path:
    path = Path(folder) / FILE_NAME
    document = {"format": FORMAT_ID, "size": len(vocab.ids), "coverage": round(vocab.coverage, 5),
                "source": vocab.source, "ids": list(vocab.ids)}
    return write_json(path, document)  # atomic: a reader never sees half a list


def load(folder: Path) -> Optional[DraftVocab]:
    """The draft vocabulary stored beside heads in `folder`, or None."""
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return None
    document = read_json(path)
    if not isinstance(document, dict) or document.get("format") != FORMAT_ID:
        raise EntmtpError(f"{path}: not an {FORMAT_ID} file")
    ids = document.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise EntmtpError(f"{path}: 'ids' must be a list of token ids")
    coverage = document.get("coverage", float("nan"))
    if isinstance(coverage, bool) or not isinstance(coverage, (int, float)):
        raise EntmtpError(f"{path}: 'coverage' must be a number")
    return DraftVocab(tuple(ids), float(coverage), str(document.get("source", "")))
