"""Speculative decoding must reproduce plain decoding (greedy, fp32) and the
base distribution (exact sampling)."""
from __future__ import annotations

import pytest
import torch

from entmtp.decode.accept import VerifyConfig, accept_by_rejection
from entmtp.decode.autoregressive import ArDecoder
from entmtp.decode.speculative import SpeculativeDecoder
from entmtp.decode.types import SamplingConfig
from entmtp.heads.modules import HydraHeads, MedusaHeads
from entmtp.model.loader import load_model
from entmtp.trees.files import load_tree
from entmtp.trees.tree import tree_from_paths

PROMPTS = [
    "Write a Python function that reverses a string.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Tell me a short story about a lighthouse keeper.",
    "What are three tips for staying focused while studying?",
]


@pytest.fixture(scope="module")
def fp32_model(default_model_dir):
    return load_model(str(default_model_dir), torch.float32)


def _random_heads(kind, loaded, seed):
    torch.manual_seed(seed)
    cls = MedusaHeads if kind == "medusa" else HydraHeads
    heads = cls(4, 1, loaded.config.hidden_size, loaded.config.vocab_size, shared_lm_head=True)
    with torch.no_grad():
        for p in heads.parameters():
            p.normal_(0, 0.02)
    return heads


class OracleDrafts:
    """Makes rank 0 of every depth the token plain greedy decoding will produce,
    so acceptance walks deep paths (real heads are not needed to test that the
    verify/accept/commit machinery is exact). Other ranks keep the heads' guesses."""

    def __init__(self, decoder: SpeculativeDecoder, reference: list[int], prompt_len: int):
        self.decoder, self.reference, self.prompt_len = decoder, reference, prompt_len
        self.inner = decoder.propose
        self.cache_len = prompt_len

    def __call__(self, root, hidden_last, peeked=None):
        tokens, confidence = self.inner(root, hidden_last, peeked)
        buffers = self.decoder.buffers
        # Emitted so far = cache_len - prompt_len + 1 (the root); node at depth d
        # guesses reference[emitted - 1 + d].
        emitted = self.cache_len - self.prompt_len + 1
        for node in range(1, buffers.n_nodes):
            path = buffers.path_nodes[node]
            if all(self.decoder.tree.ranks[int(n)] == 0 for n in path[1:] if n >= 0):
                index = emitted - 1 + self.decoder.tree.depths[node]
                if index < len(self.reference):
                    tokens[node] = self.reference[index]
        return tokens, confidence


def _track_commits(decoder, oracle):
    commit = decoder.commit

    def tracked(cache, cache_len, path):
        new_len = commit(cache, cache_len, path)
        oracle.cache_len = new_len
        return new_len

    decoder.commit = tracked


# Each (heads, tree) pair on its own prompt keeps the fp32 suite short; the
# full grid over 50+ prompts is `entmtp bench --exact-check`.
@pytest.mark.parametrize("kind,tree_name,prompt", [
    ("medusa", "mc_sim_7b_63", PROMPTS[0]),
    ("hydra", "tree16", PROMPTS[1]),
    ("hydra", "chain4", PROMPTS[2]),
    ("medusa", "tree8", PROMPTS[3]),
])
def test_greedy_is_token_identical_to_ar(fp32_model, kind, tree_name, prompt):
    loaded = fp32_model
    ids = loaded.tokenizer.encode_chat(prompt)
    reference = ArDecoder(loaded.model).generate(ids, 24, loaded.eos_token_ids)
    spec = SpeculativeDecoder(loaded.model, _random_heads(kind, loaded, 0), load_tree(tree_name))
    # Untrained heads: only the base model's bonus tokens are kept.
    plain = spec.generate(ids, 24, loaded.eos_token_ids)
    assert plain.token_ids == reference.token_ids
    # Oracle drafts: deep acceptance through the same verify/accept/commit.
    oracle = OracleDrafts(spec, reference.token_ids, len(ids))
    spec.propose = oracle
    _track_commits(spec, oracle)
    deep = spec.generate(ids, 24, loaded.eos_token_ids)
    assert deep.token_ids == reference.token_ids
    assert deep.steps < reference.steps
    assert sum(r.accepted for r in deep.records) > 0


def test_stops_at_eos_and_budget_like_ar(fp32_model):
    loaded = fp32_model
    ids = loaded.tokenizer.encode_chat("Say OK.")
    ar = ArDecoder(loaded.model).generate(ids, 60, loaded.eos_token_ids)
    spec = SpeculativeDecoder(loaded.model, _random_heads("medusa", loaded, 1), load_tree("chain4"))
    assert spec.generate(ids, 60, loaded.eos_token_ids).token_ids == ar.token_ids
    for budget in (1, 3, 7):
        assert spec.generate(ids, budget, ()).token_ids == ArDecoder(loaded.model).generate(ids, budget, ()).token_ids


def test_tree_switch_is_a_pointer_swap(fp32_model):
    chain, bushy = load_tree("chain4"), load_tree("tree16")
    spec = SpeculativeDecoder(fp32_model.model, _random_heads("hydra", fp32_model, 2), chain)
    first = spec.buffers
    spec.set_tree(bushy)
    spec.set_tree(chain)
    assert spec.buffers is first


def _toy_logits(n_nodes, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_nodes, vocab, generator=g) * 1.5


def test_exact_sampling_preserves_the_base_distribution():
    """Recursive rejection over siblings, 10^5 draws, chi-square per position.

    A small vocabulary and a fixed tree whose drafted tokens include likely and
    unlikely ones; the first emitted token must follow p(root) and the second,
    conditioned on the first, p(child)."""
    vocab = 6
    tree = tree_from_paths("t", [[0], [1], [2], [0, 0], [0, 1], [1, 0]])
    logits = _toy_logits(tree.n_nodes, vocab, 0)
    tokens = torch.tensor([0, 3, 1, 5, 2, 0, 4])  # node i's drafted token (node 0 = root)
    gen = torch.Generator().manual_seed(123)
    n = 100_000
    first = torch.zeros(vocab)
    second_after_3 = torch.zeros(vocab)
    for _ in range(n):
        out = accept_by_rejection(tokens, logits, tree.children, 1.0, gen)
        emitted = [int(tokens[i]) for i in out.path[1:]] + [int(out.bonus)]
        first[emitted[0]] += 1
        if emitted[0] == 3 and len(emitted) > 1:
            second_after_3[emitted[1]] += 1
    p_root = torch.softmax(logits[0], -1)
    p_node1 = torch.softmax(logits[1], -1)  # node 1 drafted token 3 under the root
    for observed, expected_p in ((first, p_root), (second_after_3, p_node1)):
        expected = expected_p * observed.sum()
        chi2 = float(((observed - expected) ** 2 / expected).sum())
        # 5 degrees of freedom: the 99.9% quantile is 20.5.
        assert chi2 < 20.5, (chi2, observed, expected)


def test_typical_acceptance_runs_and_is_labeled(fp32_model):
    spec = SpeculativeDecoder(fp32_model.model, _random_heads("medusa", fp32_model, 3), load_tree("tree8"),
                              VerifyConfig("typical", temperature=0.7), method="medusa+typical")
    ids = fp32_model.tokenizer.encode_chat("Hello!")
    result = spec.generate(ids, 12, fp32_model.eos_token_ids, SamplingConfig(0.7, seed=1))
    assert 1 <= result.n_tokens <= 12 and result.method == "medusa+typical"


def test_bf16_drafts_project_onto_a_q8_0_copy_of_the_lm_head(default_model_dir, fp32_model):
    """Drafting in bf16 on the CPU reads a Q8_0 copy of the LM head (half the bytes); the
    copy's logits follow the bf16 head's, fp32 models draft on the head as it is, and the
    decoders of one model share one copy."""
    from entmtp.model.quant import QuantizedWeight

    bf16 = load_model(str(default_model_dir), torch.bfloat16)
    first = {}
    for loaded, quantized in ((bf16, True), (fp32_model, False)):
        heads = _random_heads("hydra", loaded, 0)
        decoder = SpeculativeDecoder(loaded.model, heads, load_tree("tree8"))
        assert isinstance(decoder.draft_lm_head, QuantizedWeight) == quantized
        first[quantized] = decoder.draft_lm_head
    assert first[False] is fp32_model.model.lm_head
    x = torch.randn(4, bf16.config.hidden_size, generator=torch.Generator().manual_seed(0)).bfloat16()
    exact = (x.float() @ bf16.model.lm_head.float().t())
    drafted = SpeculativeDecoder(bf16.model, _random_heads("medusa", bf16, 1), load_tree("tree8")).draft_lm_head
    assert drafted.qtype == "q8_0" and drafted is first[True]
    got = drafted.linear(x).float()
    assert (got - exact).abs().max().item() < 0.05 * exact.abs().max().item()
    assert (got.argmax(-1) == exact.argmax(-1)).float().mean().item() >= 0.75


def test_bf16_hydra_drafts_run_each_first_block_as_one_q8_0_gemm(default_model_dir, fp32_model):
    """In bf16 on the CPU a Hydra head's first block (R_i over A_i) drafts as one Q8_0 matrix
    [2H, H(i+2)] (entmtp.decode.drafting.draft_blocks_for): its logits follow the bf16
    head's, the decoders of one heads object share the copies, changed weights are quantized
    again, and fp32 models draft on the module's own weights."""
    from entmtp.model.quant import QuantizedWeight

    bf16 = load_model(str(default_model_dir), torch.bfloat16)
    heads = _random_heads("hydra", bf16, 0)
    decoder = SpeculativeDecoder(bf16.model, heads, load_tree("tree8"))
    blocks = decoder.draft_blocks
    H = bf16.config.hidden_size
    assert [tuple(b.shape) for b in blocks] == [(2 * H, H * (i + 2)) for i in range(heads.n_heads)]
    assert all(isinstance(b, QuantizedWeight) and b.qtype == "q8_0" for b in blocks)
    assert SpeculativeDecoder(bf16.model, heads, load_tree("chain2")).draft_blocks is blocks
    assert SpeculativeDecoder(fp32_model.model, _random_heads("hydra", fp32_model, 0),
                              load_tree("tree8")).draft_blocks is None
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(H, generator=g).bfloat16()
    paths = torch.randint(0, bf16.config.vocab_size, (3, 3), generator=g)
    embeds = bf16.model.embed[paths].bfloat16()
    with torch.inference_mode():
        plain = heads.forward_paths(hidden, embeds, 2, bf16.model.lm_head).float()
        stacked = heads.forward_paths(hidden, embeds, 2, bf16.model.lm_head, heads.first_block(2)).float()
        drafted = heads.forward_paths(hidden, embeds, 2, bf16.model.lm_head, blocks[2]).float()
    assert torch.allclose(stacked, plain, atol=0.02 * plain.abs().max().item())
    assert (drafted - plain).abs().max().item() < 0.05 * plain.abs().max().item()
    assert (drafted.argmax(-1) == plain.argmax(-1)).float().mean().item() >= 2 / 3
    with torch.no_grad():
        heads.res_weight[0].mul_(0.5)
    assert SpeculativeDecoder(bf16.model, heads, load_tree("tree8")).draft_blocks is not blocks
