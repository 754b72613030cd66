"""The draft vocabulary (entmtp.heads.shortlist): its choice, its file, and that
drafting over it keeps greedy output token-identical to plain decoding (fp32)."""
from __future__ import annotations

import math

import pytest
import torch

from entmtp.decode.autoregressive import ArDecoder
from entmtp.decode.speculative import SpeculativeDecoder
from entmtp.errors import EntmtpError, UsageError
from entmtp.heads import shortlist
from entmtp.heads.shipped import load_draft_vocab, load_model_heads
from entmtp.model.loader import load_model
from entmtp.trees.files import load_tree


def test_choose_by_size_and_by_coverage():
    counts = torch.tensor([5, 0, 9, 5, 1, 0, 80])
    by_size = shortlist.choose(counts, size=3)
    assert by_size.ids == (6, 2, 0)           # most counted first; the tie 0/3 goes to the lower id
    assert by_size.coverage == pytest.approx(94 / 100)
    # 80 + 9 = 89% < 90% <= 94%: three ids, rounded up to a multiple of 1.
    assert shortlist.choose(counts, coverage=0.9, multiple=1).ids == (6, 2, 0)
    assert len(shortlist.choose(counts, coverage=0.9, multiple=4).ids) == 4
    assert shortlist.choose(counts, size=99).ids[:5] == (6, 2, 0, 3, 4)
    truncated = by_size.truncated(2)
    assert truncated.ids == (6, 2) and math.isnan(truncated.coverage)
    with pytest.raises(EntmtpError, match="no tokens"):
        shortlist.choose(torch.zeros(4, dtype=torch.int64), size=2)


def test_file_round_trip_and_bad_files(tmp_path):
    vocab = shortlist.choose(shortlist.count_tokens([[1, 2, 2], [3, 2]], 10), size=2, source="two lists")
    shortlist.save(vocab, tmp_path)
    assert shortlist.load(tmp_path) == vocab
    assert shortlist.load(tmp_path / "nowhere") is None
    (tmp_path / shortlist.FILE_NAME).write_text('{"format": "entmtp-draft-vocab/1", "ids": [1, 1]}')
    with pytest.raises(EntmtpError, match="distinct"):
        shortlist.load(tmp_path)
    (tmp_path / shortlist.FILE_NAME).write_text('{"format": "other"}')
    with pytest.raises(EntmtpError, match="not an entmtp-draft-vocab/1 file"):
        shortlist.load(tmp_path)


@pytest.fixture(scope="module")
def fp32_model(default_model_dir):
    return load_model(str(default_model_dir), torch.float32)


def test_shipped_heads_carry_a_draft_vocabulary(fp32_model):
    for kind in ("hydra", "medusa"):
        vocab = load_draft_vocab(fp32_model, kind, None, "heads")
        assert 1000 < len(vocab.ids) < fp32_model.config.vocab_size and vocab.coverage > 0.9
        assert len(load_draft_vocab(fp32_model, kind, None, "512").ids) == 512
    assert load_draft_vocab(fp32_model, "hydra", None, "off") is None
    with pytest.raises(UsageError, match="--draft-vocab must be"):
        load_draft_vocab(fp32_model, "hydra", None, "lots")


@pytest.mark.parametrize("kind,tree", [("hydra", "tree16"), ("medusa", "mc_sim_7b_63")])
def test_drafting_over_the_shortlist_is_exact(fp32_model, kind, tree):
    loaded = fp32_model
    ids = loaded.tokenizer.encode_chat("Write a Python function that returns the n-th Fibonacci number.")
    reference = ArDecoder(loaded.model).generate(ids, 32, loaded.eos_token_ids)
    vocab = load_draft_vocab(loaded, kind, None, "2048")
    spec = SpeculativeDecoder(loaded.model, load_model_heads(loaded, kind), load_tree(tree), draft_vocab=vocab)
    drafted: list[torch.Tensor] = []
    propose = spec.propose

    def recording(*args, **kwargs):
        tokens, confidence = propose(*args, **kwargs)
        drafted.append(tokens[1:])
        return tokens, confidence

    spec.propose = recording
    result = spec.generate(ids, 32, loaded.eos_token_ids)
    assert result.token_ids == reference.token_ids
    allowed = set(vocab.ids)
    assert drafted and all(int(t) in allowed for step in drafted for t in step)
    assert sum(r.accepted for r in result.records) > 0  # the shortlist still drafts accepted tokens


def test_draft_vocabulary_needs_a_shared_lm_head(fp32_model):
    from entmtp.heads.modules import MedusaHeads

    cfg = fp32_model.config
    own = MedusaHeads(2, 1, cfg.hidden_size, cfg.vocab_size, shared_lm_head=False)
    vocab = shortlist.DraftVocab((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), 1.0, "")
    with pytest.raises(UsageError, match="share the base model's LM head"):
        SpeculativeDecoder(fp32_model.model, own, load_tree("chain2"), draft_vocab=vocab)
