"""GGUF -> Hugging Face folder conversion (entmtp.model.gguf_import)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from entmtp.errors import EntmtpError
from entmtp.model.gguf_import import convert_gguf

EXPECTED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", "chat_template.jinja"}


def _transformers():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("accelerate", reason="accelerate is not installed (transformers' GGUF loader needs it)")
    return transformers


def _llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # HF rotate-half row order -> ggml adjacent pairs: (n_head, 2, d/2, in) -> swap middle axes.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, -1).transpose(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def hf_from_gguf(default_gguf_path):
    """transformers' own GGUF load of the default model (dequantizes on load: slow, once)."""
    transformers = _transformers()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(default_gguf_path.parent), gguf_file=default_gguf_path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_from_folder(default_model_dir):
    transformers = _transformers()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(default_model_dir), dtype=torch.float32).eval()


# ---------------------------------------------------------------- default model


def test_default_model_folder_and_config(default_model_dir):
    from entmtp.model.config import ModelConfig

    assert EXPECTED_FILES <= {p.name for p in default_model_dir.iterdir()}
    cfg = json.loads((default_model_dir / "config.json").read_text())
    expected = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "hidden_act": "silu",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "dtype": "float32",
    }
    assert cfg == expected
    gen = json.loads((default_model_dir / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    tok_cfg = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tok_cfg["bos_token"], tok_cfg["eos_token"], tok_cfg["pad_token"], tok_cfg["unk_token"]) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert tok_cfg["add_bos_token"] is False
    assert tok_cfg["chat_template"] == (default_model_dir / "chat_template.jinja").read_text()
    # entmtp's own config reader accepts every key we wrote.
    mc = ModelConfig.from_folder(default_model_dir)
    assert (mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim, mc.tie_word_embeddings) == (9, 3, 64, True)

    with safe_open(str(default_model_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F32"
    assert len(keys) == 272 and "lm_head.weight" not in keys  # tied: no separate head


def test_default_weights_bit_identical_to_transformers_gguf(default_model_dir, hf_from_gguf):
    ours = load_file(str(default_model_dir / "model.safetensors"))
    theirs = {k: v for k, v in hf_from_gguf.state_dict().items() if k != "lm_head.weight"}
    assert set(ours) == set(theirs)
    mismatched = [k for k in ours if not torch.equal(torch.from_numpy(ours[k]), theirs[k])]
    assert mismatched == []
    # Parameter count from the reference (tied head counted once).
    assert sum(v.size for v in ours.values()) == 134_515_008


def test_default_logits_equal_transformers_gguf(default_model_dir, hf_from_gguf, hf_from_folder):
    from entmtp.model.tokenizer import Tokenizer

    prompt = Tokenizer.from_folder(default_model_dir).encode_chat("What is 17 times 23? Explain briefly.")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = hf_from_gguf(ids).logits
        got = hf_from_folder(ids).logits
    assert torch.equal(ref, got)
    # The check is sensitive to the q/k row order: re-applying llama.cpp's
    # permutation to one layer's q and k changes the logits by a lot.
    attn = hf_from_folder.model.layers[0].self_attn
    q, k = attn.q_proj.weight.data.clone(), attn.k_proj.weight.data.clone()
    try:
        attn.q_proj.weight.data = _llama_cpp_permute(q, 9)
        attn.k_proj.weight.data = _llama_cpp_permute(k, 3)
        with torch.no_grad():
            wrong = hf_from_folder(ids).logits
    finally:
        attn.q_proj.weight.data, attn.k_proj.weight.data = q, k
    assert (wrong - ref).abs().max() > 0.1


# ---------------------------------------------------------------- tiny GGUF files


def test_tiny_untied_conversion_exact(tiny_gguf, tmp_path):
    path, expected = tiny_gguf()
    out = convert_gguf(path, tmp_path / "out")
    assert out == tmp_path / "out"
    assert EXPECTED_FILES == {p.name for p in out.iterdir()}
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(expected) and "lm_head.weight" in got
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"],
            cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (32, 4, 2, 8, 64, 2, 263)
    assert cfg["rms_norm_eps"] == 1e-6 and cfg["max_position_embeddings"] == 64


def test_tiny_logits_equal_transformers_gguf(tiny_gguf, tmp_path):
    transformers = _transformers()
    path, _ = tiny_gguf()
    out = convert_gguf(path, tmp_path / "out")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    ours = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 50, 60, 70, 260, 261, 262, 5, 6, 7, 100]])
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, ours(ids).logits)


def test_tiny_tied_and_bfloat16(tiny_gguf, tmp_path):
    path, expected = tiny_gguf(tied=True)
    out = convert_gguf(path, tmp_path / "out", dtype="bfloat16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
        emb = f.get_tensor("model.embed_tokens.weight")
    assert emb.dtype == torch.bfloat16
    assert torch.equal(emb, torch.from_numpy(expected["model.embed_tokens.weight"]).to(torch.bfloat16))


def test_rope_scaling_linear_is_mapped(tiny_gguf, tmp_path):
    path, _ = tiny_gguf(rope_scaling=("linear", 4.0))
    cfg = json.loads((convert_gguf(path, tmp_path / "out") / "config.json").read_text())
    assert cfg["rope_parameters"] == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}


def _assert_no_leftovers(parent, name):
    assert not (parent / name).exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")] == []


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "gpt2"}, "architecture 'gpt2' is not supported; entmtp imports llama GGUF files"),
    ({"pre": "llama-bpe"}, "pre-tokenizer 'llama-bpe' is not supported"),
    ({"rope_scaling": ("yarn", 4.0)}, "rope scaling type 'yarn' is not supported"),
    ({"extra_tensors": {"rope_freqs.weight": np.ones(4)}}, "rope_freqs.weight"),
    ({"drop_tensors": ("blk.1.ffn_up.weight",)}, "missing tensors for a llama model: model.layers.1.mlp.up_proj.weight"),
])
def test_unsupported_files_fail_clearly(tiny_gguf, tmp_path, kwargs, message):
    path, _ = tiny_gguf(**kwargs)
    with pytest.raises(EntmtpError, match=message.replace(".", r"\.")) as info:
        convert_gguf(path, tmp_path / "out")
    assert "\n" not in str(info.value)
    _assert_no_leftovers(tmp_path, "out")


def test_failure_during_tensor_conversion_leaves_no_folder(tiny_gguf, tmp_path):
    # The unknown tensor is met only while converting weights, after the
    # tokenizer and config files were already written to the temp folder.
    path, _ = tiny_gguf(extra_tensors={"blk.0.attn_weird.weight": np.ones(4)})
    with pytest.raises(EntmtpError, match="tensor 'blk.0.attn_weird.weight' is not part of a llama model"):
        convert_gguf(path, tmp_path / "out")
    _assert_no_leftovers(tmp_path, "out")


def test_interrupt_while_saving_leaves_no_folder(tiny_gguf, tmp_path, monkeypatch):
    import entmtp.model.gguf_import as gi

    real_save = gi._save_safetensors

    def save_then_interrupt(tensors, path):
        real_save(tensors, path)  # the file is complete in the temp folder...
        raise KeyboardInterrupt   # ...but the folder was not renamed into place yet

    monkeypatch.setattr(gi, "_save_safetensors", save_then_interrupt)
    path, _ = tiny_gguf()
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(path, tmp_path / "out")
    _assert_no_leftovers(tmp_path, "out")


def test_existing_output_folder(tiny_gguf, tmp_path):
    path, _ = tiny_gguf()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(EntmtpError, match="already exists and is not empty"):
        convert_gguf(path, full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (convert_gguf(path, empty) / "model.safetensors").is_file()


def test_bad_inputs(tmp_path):
    with pytest.raises(EntmtpError, match="does not exist"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOTAGGUF" * 8)
    with pytest.raises(EntmtpError, match="not a GGUF file"):
        convert_gguf(junk, tmp_path / "out")
    with pytest.raises(EntmtpError, match="dtype must be one of"):
        convert_gguf(junk, tmp_path / "out", dtype="int8")
    _assert_no_leftovers(tmp_path, "out")


def test_truncated_gguf(tiny_gguf, tmp_path):
    path, _ = tiny_gguf()
    data = path.read_bytes()
    for cut in (2000, len(data) - 100):  # inside the header / inside the tensor data
        short = tmp_path / f"short{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(EntmtpError, match="truncated"):
            convert_gguf(short, tmp_path / "out")
    _assert_no_leftovers(tmp_path, "out")
