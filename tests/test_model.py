"""Our Llama-family decoder against transformers (the test-only reference)."""
from __future__ import annotations

import json

import pytest
import torch

from entmtp.decode.autoregressive import ArDecoder
from entmtp.errors import EntmtpError
from entmtp.model.config import ModelConfig
from entmtp.model.loader import load_model
from entmtp.reference import causal_tree_bits

transformers = pytest.importorskip("transformers")


def _tiny(kind: str, tmp_path, **overrides):
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5)
    common.update(overrides)
    torch.manual_seed(0)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(tie_word_embeddings=False, **common))
    elif kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(tie_word_embeddings=True, **common))
    else:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(tie_word_embeddings=False, **common))
    # Random init leaves biases at zero; perturb everything so biases matter.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(tmp_path)
    return model.eval()


def _ours(folder, dtype=torch.float32):
    from entmtp.model.loader import _check_tensors, _read_tensors, _weight_files, build_model

    cfg = ModelConfig.from_folder(folder)
    tensors = _read_tensors(_weight_files(folder), dtype)
    _check_tensors(folder, cfg, tensors)
    return build_model(cfg, tensors, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_logits_match_transformers(kind, tmp_path):
    ref_model = _tiny(kind, tmp_path)
    ours = _ours(tmp_path)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_model(ids).logits
    cache = ours.new_cache(1, 64)
    _, logits = ours(ids, torch.arange(40)[None], cache, 0)
    assert (logits - ref).abs().max().item() <= 1e-3


def test_llama3_rope_scaling_matches_transformers(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32, "rope_theta": 500000.0}
    ref_model = _tiny("llama", tmp_path, rope_parameters=scaling)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert ModelConfig.from_hf_dict(cfg).rope_scaling is not None
    ours = _ours(tmp_path)
    ids = torch.randint(0, 128, (1, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = ref_model(ids).logits
    _, logits = ours(ids, torch.arange(100)[None], ours.new_cache(1, 128), 0)
    assert (logits - ref).abs().max().item() <= 1e-3


def test_token_by_token_equals_full_forward_and_causal_mask_hook(tmp_path):
    _tiny("llama", tmp_path)
    ours = _ours(tmp_path)
    n = 24
    ids = torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(3))
    _, full = ours(ids, torch.arange(n)[None], ours.new_cache(1, 32), 0)
    cache = ours.new_cache(1, 32)
    steps = [ours(ids[:, i:i + 1], torch.tensor([[i]]), cache, i)[1] for i in range(n)]
    assert (torch.cat(steps, 1) - full).abs().max().item() <= 1e-5
    # An explicit causal mask through the tree-mask hook equals the default path,
    # here as a block of 8 new tokens after a 16-token prefix.
    cache = ours.new_cache(1, 32)
    ours(ids[:, :16], torch.arange(16)[None], cache, 0)
    _, implicit = ours(ids[:, 16:], torch.arange(16, n)[None], cache, 16)
    _, explicit = ours(ids[:, 16:], torch.arange(16, n)[None], cache, 16, tree_bits=causal_tree_bits(8))
    assert torch.equal(implicit, explicit)
    assert (explicit - full[:, 16:]).abs().max().item() <= 1e-5


def test_bf16_model_close_to_fp32(tmp_path):
    _tiny("llama", tmp_path)
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(4))
    _, f32 = _ours(tmp_path)(ids, torch.arange(20)[None], _ours(tmp_path).new_cache(1, 32), 0)
    bf = _ours(tmp_path, torch.bfloat16)
    _, b16 = bf(ids, torch.arange(20)[None], bf.new_cache(1, 32), 0)
    assert b16.dtype == torch.bfloat16
    assert (b16.float() - f32).abs().max().item() < 0.1


def test_config_errors(tmp_path):
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    ModelConfig.from_hf_dict(base)
    with pytest.raises(EntmtpError, match="unsupported architecture model_type='gpt2'"):
        ModelConfig.from_hf_dict({**base, "model_type": "gpt2"})
    with pytest.raises(EntmtpError, match="unknown config keys frobnicate"):
        ModelConfig.from_hf_dict({**base, "frobnicate": 1})
    with pytest.raises(EntmtpError, match="hidden_act='gelu'"):
        ModelConfig.from_hf_dict({**base, "hidden_act": "gelu"})
    with pytest.raises(EntmtpError, match="rope type 'yarn'"):
        ModelConfig.from_hf_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(EntmtpError, match="missing keys vocab_size"):
        ModelConfig.from_hf_dict({k: v for k, v in base.items() if k != "vocab_size"})


def test_default_model_matches_transformers(default_model_dir):
    """The converted default model: fp32 logits within 1e-3, greedy 64 tokens identical."""
    loaded = load_model(str(default_model_dir), torch.float32)
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(str(default_model_dir), dtype=torch.float32)
    ids = loaded.tokenizer.encode_chat("Write a Python function that checks whether a number is prime.")
    prompt = torch.tensor([ids])
    with torch.no_grad():
        ref_logits = ref_model(prompt).logits
        ref_out = ref_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64,
                                     min_new_tokens=64, do_sample=False, pad_token_id=0)
    model = loaded.model
    _, logits = model(prompt, torch.arange(len(ids))[None], model.new_cache(1, 256), 0)
    assert (logits - ref_logits).abs().max().item() <= 1e-3
    ours = ArDecoder(model).generate(ids, 64, eos_ids=())
    assert ours.token_ids == ref_out[0, len(ids):].tolist()


def test_sharded_checkpoint_loads_like_single_file(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    model = _tiny("llama", single)
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(5))
    a, b = _ours(single), _ours(sharded)
    _, la = a(ids, torch.arange(12)[None], a.new_cache(1, 16), 0)
    _, lb = b(ids, torch.arange(12)[None], b.new_cache(1, 16), 0)
    assert torch.equal(la, lb)
