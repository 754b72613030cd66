"""Hydra++ heads (prefix-mlp): the prefix layer against transformers' Llama layer, its decode-time
runner against its training forward, the upstream checkpoint layout written here at random weights,
our own format, every refused input, and greedy decoding token-identical to plain decoding (fp32)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from entmtp.decode.autoregressive import ArDecoder
from entmtp.decode.speculative import SpeculativeDecoder
from entmtp.errors import EntmtpError
from entmtp.heads.formats import load_heads, save_heads
from entmtp.heads.prefix import HydraPrefixHeads, PrefixLayer, PrefixRunner, PrefixShape
from entmtp.model.config import ModelConfig
from entmtp.model.llama import LlamaModel
from entmtp.trees.files import load_tree
from entmtp.trees.tree import tree_from_paths

transformers = pytest.importorskip("transformers")

H, V, N_Q, N_KV, D, INTER = 32, 40, 4, 2, 8, 48


def tiny_config(**overrides) -> ModelConfig:
    raw = dict(model_type="llama", vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=N_Q, num_key_value_heads=N_KV, rms_norm_eps=1e-5, rope_theta=10000.0,
               max_position_embeddings=128)
    return ModelConfig.from_hf_dict(raw | overrides)


def hf_prefix(seed: int = 0, sizes: dict | None = None):
    """Upstream's prefix layer: a one-layer transformers LlamaModel over the base config."""
    torch.manual_seed(seed)
    sizes = sizes or dict(vocab_size=V, hidden_size=H, intermediate_size=INTER, num_attention_heads=N_Q,
                          num_key_value_heads=N_KV, rms_norm_eps=1e-5, rope_theta=10000.0)
    model = transformers.LlamaModel(transformers.LlamaConfig(num_hidden_layers=1, max_position_embeddings=128,
                                                             **sizes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_reference(model, hidden: torch.Tensor) -> torch.Tensor:
    """[T, H] -> [T, H]: the upstream prefix layer's output (its final norm included)."""
    positions = torch.arange(hidden.shape[0]).unsqueeze(0)
    with torch.no_grad():
        return model(inputs_embeds=hidden.unsqueeze(0), position_ids=positions).last_hidden_state[0]


def upstream_raw(n_heads: int = 3, n_layers: int = 4, seed: int = 0, sizes: dict | None = None,
                 dtype=torch.float32) -> dict[str, torch.Tensor]:
    """The ankner/hydra-vicuna layout: Sequential(Dropout, ResBlock, Dropout, ResBlock, ...) per head
    (ResBlocks at 1, 3, 5, ..; the later ones one shared tensor), lm heads after a Dropout, the prefix
    layer as a one-layer LlamaModel (with the embed_tokens it never uses)."""
    g = torch.Generator().manual_seed(seed)
    raw = {f"prefix_embeding_layer.{k}": v.clone() for k, v in hf_prefix(seed, sizes).state_dict().items()}
    hidden, vocab = (H, V) if sizes is None else (sizes["hidden_size"], sizes["vocab_size"])
    # What upstream's module also saves: its handle on the base embed_tokens and (older
    # transformers) the RoPE buffer. Neither is a weight of the heads.
    raw["input_embed_fn.weight"] = torch.randn(vocab, hidden, generator=g)
    raw["prefix_embeding_layer.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(N_Q, generator=g)
    for i in range(n_heads):
        width = hidden * (i + 2)
        for part in ("linear", "res_connection"):
            raw[f"hydra_mlp.{i}.1.{part}.weight"] = torch.randn(hidden, width, generator=g) * 0.2
            raw[f"hydra_mlp.{i}.1.{part}.bias"] = torch.randn(hidden, generator=g) * 0.2
        shared_w, shared_b = torch.randn(hidden, hidden, generator=g) * 0.2, torch.randn(hidden, generator=g) * 0.2
        for j in range(1, n_layers):
            raw[f"hydra_mlp.{i}.{2 * j + 1}.linear.weight"] = shared_w
            raw[f"hydra_mlp.{i}.{2 * j + 1}.linear.bias"] = shared_b
        raw[f"hydra_lm_head.{i}.1.weight"] = torch.randn(vocab, hidden, generator=g) * 0.2
        raw[f"hydra_lm_head.{i}.1.bias"] = torch.randn(vocab, generator=g) * 0.2
    return {k: v.to(dtype) for k, v in raw.items()}


def write_upstream(folder, raw, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(raw, folder / "hydra_lm_head.pt")
    cfg = {"base_model_name_or_path": "a/base", "grounded_heads": True, "hidden_state_offset": 0,
           "hydra_head_arch": "prefix-mlp", "hydra_num_heads": 3, "hydra_num_layers": 4,
           "transformers_version": "4.33.2"}
    (folder / "config.json").write_text(json.dumps(cfg if config is None else config))
    return folder


def upstream_head_logits(raw, prefix_out, path_embeds, i, n_layers=4):
    """Head i straight from the raw tensors: [P, V]."""
    z = torch.cat([prefix_out.expand(path_embeds.shape[0], H), path_embeds.reshape(path_embeds.shape[0], -1)], -1)
    y = (z @ raw[f"hydra_mlp.{i}.1.res_connection.weight"].T + raw[f"hydra_mlp.{i}.1.res_connection.bias"]
         + F.silu(z @ raw[f"hydra_mlp.{i}.1.linear.weight"].T + raw[f"hydra_mlp.{i}.1.linear.bias"]))
    for j in range(1, n_layers):
        y = y + F.silu(y @ raw[f"hydra_mlp.{i}.{2 * j + 1}.linear.weight"].T
                       + raw[f"hydra_mlp.{i}.{2 * j + 1}.linear.bias"])
    return y @ raw[f"hydra_lm_head.{i}.1.weight"].T + raw[f"hydra_lm_head.{i}.1.bias"]


def base_without_layers(config: ModelConfig, dtype=torch.float32) -> LlamaModel:
    """What PrefixLayer.runtime reads of a base model: config, dtype, device, embed, lm_head."""
    g = torch.Generator().manual_seed(1)
    embed = torch.randn(V, H, generator=g).to(dtype)
    return LlamaModel(config, embed, [], torch.ones(H, dtype=dtype), embed)


# --------------------------------------------------------------------------- the prefix layer

def test_upstream_checkpoint_matches_transformers_and_raw_heads(tmp_path):
    """The prefix-mlp fixture loads (heads and layers counted from its keys) and computes what the
    raw tensors and transformers' Llama layer compute; the training forward agrees too (fp32)."""
    raw = upstream_raw()
    heads = load_heads(write_upstream(tmp_path / "up", raw), hidden_size=H, vocab_size=V, model_config=tiny_config())
    assert isinstance(heads, HydraPrefixHeads) and heads.kind == "hydrapp"
    assert (heads.n_heads, heads.n_layers, heads.prefix.shape.intermediate_size) == (3, 4, INTER)
    hidden = torch.randn(9, H, generator=torch.Generator().manual_seed(3))
    expected = hf_reference(hf_prefix(0), hidden)
    ours = heads.prefix.train_forward(hidden.unsqueeze(0), tiny_config())[0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    embed = torch.randn(V, H, generator=torch.Generator().manual_seed(4))
    paths = torch.tensor([[1, 5, 7], [2, 9, 3]])
    for i in range(3):
        got = heads.forward_paths(ours[-1], F.embedding(paths[:, :i + 1], embed), i, None)
        want = upstream_head_logits(raw, expected[-1], F.embedding(paths[:, :i + 1], embed), i)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_runner_appending_chunks_equals_the_whole_sequence(dtype, tol):
    """Prefill, then appends of 1..4 rows (the accepted paths of decoding steps): each append's last
    output is the causal layer's output at that position over the whole sequence at once."""
    config = tiny_config()
    layer = PrefixLayer(PrefixShape.of(config), H)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    hidden = torch.randn(20, H, generator=torch.Generator().manual_seed(5))
    whole = layer.train_forward(hidden.unsqueeze(0), config)[0].detach()
    runner = PrefixRunner(layer.to(dtype), base_without_layers(config, dtype))
    got = [runner.start(hidden[:6].to(dtype), 32)]
    ends = [6]
    for n in (1, 3, 4, 2, 1, 3):
        got.append(runner.advance(hidden[ends[-1]:ends[-1] + n].to(dtype), ends[-1]))
        ends.append(ends[-1] + n)
    torch.testing.assert_close(torch.stack(got).float(), whole[[e - 1 for e in ends]], rtol=tol, atol=tol)


def test_own_format_roundtrip(tmp_path):
    config = tiny_config(intermediate_size=INTER)
    heads = load_heads(write_upstream(tmp_path / "up", upstream_raw()), hidden_size=H, vocab_size=V,
                       model_config=config)
    save_heads(heads, tmp_path / "ours")
    stored = json.loads((tmp_path / "ours" / "entmtp_heads.json").read_text())
    assert stored["kind"] == "hydrapp" and stored["prefix"] == {
        "num_attention_heads": N_Q, "num_key_value_heads": N_KV, "head_dim": D, "intermediate_size": INTER}
    back = load_heads(tmp_path / "ours", hidden_size=H, vocab_size=V, model_config=config, kind="hydrapp")
    for (name, a), (_, b) in zip(heads.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------------- bad input

def _error(path, config=None) -> str:
    with pytest.raises(EntmtpError) as info:
        load_heads(path, hidden_size=H, vocab_size=V, model_config=config or tiny_config())
    message = str(info.value)
    assert "\n" not in message
    return message


def test_refused_checkpoints(tmp_path):
    raw = upstream_raw()
    # A prefix layer for another model: other kv heads (and another hidden size).
    assert "kv heads" in _error(write_upstream(tmp_path / "a", raw), tiny_config(num_key_value_heads=4))
    assert "k_proj.weight" in _error(write_upstream(tmp_path / "a", raw), tiny_config(num_key_value_heads=4))
    message = _error(write_upstream(tmp_path / "b", raw), tiny_config(head_dim=16))
    assert "q_proj.weight" in message and "another model" in message
    # An unknown head architecture, named.
    config = {"hydra_head_arch": "eagle-attn", "grounded_heads": True}
    assert "'eagle-attn'" in _error(write_upstream(tmp_path / "c", raw, config))
    # A head's block missing: the key is named.
    missing = {k: v for k, v in raw.items() if k != "hydra_mlp.2.5.linear.weight"}
    assert "hydra_mlp.2.5.linear.weight" in _error(write_upstream(tmp_path / "d", missing))
    missing = {k: v for k, v in raw.items() if k != "prefix_embeding_layer.layers.0.mlp.up_proj.weight"}
    assert "up_proj" in _error(write_upstream(tmp_path / "e", missing))
    # prefix-mlp without its prefix layer; the layer under an mlp config; a two-layer prefix.
    gap = {k: v for k, v in raw.items() if not k.startswith("hydra_mlp.0.3.")}
    assert "hydra_mlp.0 holds blocks [1, 5, 7]" in _error(write_upstream(tmp_path / "j", gap))
    heads_only = {k: v for k, v in raw.items() if not k.startswith("prefix_embeding_layer.")}
    assert "prefix layer is missing" in _error(write_upstream(tmp_path / "f", heads_only))
    assert "says hydra_head_arch 'mlp'" in _error(write_upstream(tmp_path / "g", raw, {"hydra_head_arch": "mlp"}))
    deeper = raw | {"prefix_embeding_layer.layers.1.input_layernorm.weight": torch.ones(H)}
    assert "one-layer prefix" in _error(write_upstream(tmp_path / "h", deeper))
    with pytest.raises(EntmtpError, match="needs the base model's config"):
        load_heads(write_upstream(tmp_path / "i", raw), hidden_size=H, vocab_size=V)


def test_refused_own_format(tmp_path):
    config = tiny_config(intermediate_size=INTER)
    heads = load_heads(write_upstream(tmp_path / "up", upstream_raw()), hidden_size=H, vocab_size=V,
                       model_config=config)
    save_heads(heads, tmp_path / "ours")
    assert "num_key_value_heads 2 but the base model has 1" in _error(tmp_path / "ours",
                                                                      tiny_config(num_key_value_heads=1))
    path = tmp_path / "ours" / "entmtp_heads.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps(stored | {"prefix": {"num_attention_heads": 4}}))
    assert "prefix has missing keys" in _error(tmp_path / "ours")
    path.write_text(json.dumps({k: v for k, v in stored.items() if k != "prefix"}))
    assert "need a 'prefix' entry" in _error(tmp_path / "ours")
    path.write_text(json.dumps(stored | {"kind": "hydra"}))
    assert "'prefix' goes only with hydrapp heads" in _error(tmp_path / "ours")


# --------------------------------------------------------------------------- decoding

@pytest.fixture(scope="module")
def fp32_model(default_model_dir):
    from entmtp.model.loader import load_model

    return load_model(str(default_model_dir), torch.float32)


def random_hydrapp(loaded, seed: int = 0) -> HydraPrefixHeads:
    torch.manual_seed(seed)
    cfg = loaded.config
    heads = HydraPrefixHeads(4, 2, cfg.hidden_size, cfg.vocab_size, shared_lm_head=True,
                             prefix_shape=PrefixShape.of(cfg))
    with torch.no_grad():
        for name, p in heads.named_parameters():
            if not name.startswith("prefix."):
                p.normal_(0, 0.02)
            elif name.endswith(("qkv", "o", "gate_up", "down")):
                # Large enough that attending to a wrong set of positions shows (checked by mutation).
                p.normal_(0, 0.15)
    return heads


def test_greedy_is_token_identical_to_ar_and_heads_see_the_committed_prefix(fp32_model):
    """Static trees and a tree switched every step give ar's tokens. Deep acceptance (oracle drafts
    at rank 0) makes each step append several rows to the prefix cache; at every step the heads'
    input must be the prefix layer over exactly the committed positions' base hidden states."""
    from test_entmtp import CyclingPolicy
    from test_speculative import OracleDrafts, _track_commits

    loaded = fp32_model
    ids = loaded.tokenizer.encode_chat("Write a Python function that returns the sum of a list.")
    reference = ArDecoder(loaded.model).generate(ids, 40, loaded.eos_token_ids)
    heads = random_hydrapp(loaded)
    trees = [tree_from_paths("none", []), load_tree("chain4"), load_tree("tree16"), load_tree("mc_sim_7b_63")]
    for tree, policy in [(load_tree("mc_sim_7b_63"), None), (trees[0], CyclingPolicy(trees))]:
        spec = SpeculativeDecoder(loaded.model, heads, tree, policy=policy)
        assert spec.generate(ids, 40, loaded.eos_token_ids).token_ids == reference.token_ids
        # A fresh decoder: the first run left this sequence's right K/V in its prefix cache.
        spec = SpeculativeDecoder(loaded.model, heads, tree, policy=policy)
        oracle = OracleDrafts(spec, reference.token_ids, len(ids))
        inputs = []
        spec.propose = lambda root, head_input, peeked=None: (inputs.append((oracle.cache_len, head_input.clone())),
                                                             oracle(root, head_input, peeked))[1]
        _track_commits(spec, oracle)
        deep = spec.generate(ids, 40, loaded.eos_token_ids)
        assert deep.token_ids == reference.token_ids and deep.steps < reference.steps // 2
        committed = ids + reference.token_ids
        positions = torch.arange(len(committed)).unsqueeze(0)
        hidden, _ = loaded.model(torch.tensor([committed]), positions, loaded.model.new_cache(1, len(committed)), 0,
                                 logits_rows=slice(0, 0))
        with torch.no_grad():
            whole = spec.heads.prefix.train_forward(hidden, loaded.config)[0]
        assert len({n for n, _ in inputs}) > 5
        for cache_len, head_input in inputs:
            torch.testing.assert_close(head_input, whole[cache_len - 1], rtol=1e-4, atol=1e-4)


def test_upstream_checkpoint_for_the_default_model_decodes_exactly(tmp_path, default_model_dir, capsys):
    """The upstream layout at the default model's sizes (random weights, 2 heads, bf16 as shipped
    upstream) loads and runs through the command line, token-identical to ar in fp32. (Greedy
    output is ar's whatever the heads compute; the Hydra++ maths is held by the tests above.)"""
    from test_cli import _run

    from entmtp.model.config import ModelConfig as Config

    cfg = Config.from_folder(default_model_dir)
    sizes = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                 num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                 rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta)
    prompt = tmp_path / "prompt.txt"
    folder = write_upstream(tmp_path / "up", upstream_raw(2, 2, sizes=sizes, dtype=torch.bfloat16))
    prompt.write_text("List three prime numbers.")
    outputs = {}
    for method in ("ar", "hydrapp"):
        extra = ["--heads", str(folder), "--tree", "chain2"] if method == "hydrapp" else []
        code, out, err = _run(capsys, "run", "--method", method, "--dtype", "fp32", "--prompt-file", str(prompt),
                              "--max-new-tokens", "24", "--json", *extra)
        assert code == 0, err
        outputs[method] = json.loads(out.strip().splitlines()[-1])
    assert outputs["hydrapp"]["method"] == "hydrapp"
    assert outputs["hydrapp"]["token_ids"] == outputs["ar"]["token_ids"]


def test_shipped_hydrapp_heads_and_banks_decode_exactly(tmp_path, capsys):
    """The Hydra++ heads shipped for the default model (no --heads), statically and through
    their tree bank switched per step, give ar's tokens in fp32; the heads are the trained ones
    (teacher loss, with a prefix layer), not a fixture."""
    from test_cli import _run

    from entmtp.heads.shipped import HEADS_DIR

    meta = json.loads((HEADS_DIR / "smollm2-135m-instruct" / "hydrapp" / "entmtp_heads.json").read_text())
    assert meta["kind"] == "hydrapp" and meta["training"]["config"]["loss"] == "teacher"
    assert set(meta["prefix"]) == {"num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size"}
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Write a Python function that returns the largest of three numbers.")
    outputs = {}
    runs = {"ar": [], "hydrapp": [], "entmtp": ["--head-kind", "hydrapp", "--task", "humaneval"]}
    for method, extra in runs.items():
        code, out, err = _run(capsys, "run", "--method", method, "--dtype", "fp32", "--prompt-file", str(prompt),
                              "--max-new-tokens", "40", "--json", *extra)
        assert code == 0, err
        outputs[method] = json.loads(out.strip().splitlines()[-1])
    assert outputs["hydrapp"]["token_ids"] == outputs["ar"]["token_ids"]
    assert outputs["entmtp"]["token_ids"] == outputs["ar"]["token_ids"]
    # Trained heads accept drafts: fewer model steps than tokens.
    assert outputs["hydrapp"]["steps"] < outputs["hydrapp"]["n_tokens"]


@pytest.mark.parametrize("value,needle", [
    ("hydrapp", "--heads takes KIND=PATH items"),
    ("eagle=somewhere", "KIND one of medusa, hydra, hydrapp, not 'eagle=somewhere'"),
    ("hydrapp=/no/such/heads", "--heads hydrapp=/no/such/heads: /no/such/heads does not exist"),
])
def test_bench_heads_option_refuses_bad_values(capsys, value, needle):
    from test_cli import _one_error_line, _run

    code, _, err = _run(capsys, "bench", "--methods", "hydrapp", "--heads", value, "--limit", "1")
    assert code == 2
    _one_error_line(err, needle)
