"""Convert a llama-architecture GGUF file into a Hugging Face model folder.

The output folder holds config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json and (when the GGUF has one)
chat_template.jinja, so that both entmtp's loader and transformers'
`from_pretrained` read it without the GGUF.

Facts this relies on (tests/test_gguf_import.py checks the result against transformers):
  * GGUF lists a tensor's dimensions innermost first (ne0, ne1, ...), so the
    numpy shape is the reverse; that reversed shape is already torch's
    [out_features, in_features] Linear layout, no transpose needed.
  * llama.cpp's HF->GGUF converter permutes the rows of attn_q / attn_k inside
    each head so that ggml's adjacent-pair rope sees HF's rotate-half pairs
    (i, i + d/2) as (2i, 2i+1). We undo that permutation for q and k only.
  * The `smollm` pre-tokenizer splits every digit off first and then runs the
    GPT-2 regex; tokenizers' Digits(individual_digits=True) + ByteLevel does
    exactly that.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from entmtp.errors import EntmtpError
from entmtp.model.gguf_file import GGUFFile, GGUFMetadata

# Output dtypes accepted by convert_gguf (name -> torch dtype attribute name).
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}

# GGUF token types (gguf.TokenType): only these two change the HF tokenizer.
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4

# Pre-tokenizers we reproduce exactly (llama.cpp's `tokenizer.ggml.pre` names).
SUPPORTED_PRE_TOKENIZERS = ("smollm",)

# Per-block tensor names: GGUF suffix -> HF suffix under model.layers.N.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                 dtype: str = "float32") -> Path:
    """Convert `gguf_path` into the Hugging Face folder `out_dir`; return its path.

    The folder is built in a temporary directory beside `out_dir` and renamed
    into place at the end, so an interrupted or failed conversion leaves no
    partial folder. `out_dir` must not exist yet (an empty directory is fine).
    `dtype` is the safetensors dtype: float32 (default), bfloat16 or float16.
    """
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if dtype not in _DTYPES:
        raise EntmtpError(f"convert_gguf: dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    if not gguf_path.is_file():
        raise EntmtpError(f"GGUF file {gguf_path} does not exist")
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise EntmtpError(f"output folder {out_dir} already exists and is not empty")

    try:
        gf = GGUFFile(gguf_path)
    except OSError as exc:
        raise EntmtpError(f"{gguf_path}: cannot read ({exc.strerror or exc})") from None
    meta = GGUFMetadata(gf.fields, gguf_path)
    hparams = _read_hparams(meta, gf)
    tokenizer_json, tokenizer_config, chat_template = _build_tokenizer(meta, hparams)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        # Cheap files first, the weights last: a failure while converting a
        # tensor must still leave nothing behind (checked by the tests).
        tokenizer_json.save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", tokenizer_config)
        if chat_template is not None:
            (tmp / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
        _write_json(tmp / "config.json", _hf_config(hparams, dtype))
        _write_json(tmp / "generation_config.json", _generation_config(hparams))
        tensors = _convert_tensors(gf, hparams, gguf_path, dtype)
        _save_safetensors(tensors, tmp / "model.safetensors")
        del tensors
        _apply_umask(tmp)
        os.replace(tmp, out_dir)  # atomic; replaces only an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _apply_umask(folder: Path) -> None:
    """mkdtemp makes a 0700 folder (and safetensors may write 0600 files); give the
    result the permissions a plain mkdir/open would have had."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~mask)


# ---------------------------------------------------------------- metadata


def _read_hparams(meta: GGUFMetadata, gf: GGUFFile) -> dict:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise EntmtpError(f"{meta.path}: architecture {arch!r} is not supported; "
                          "entmtp imports llama GGUF files")
    n_head = int(meta.require("llama.attention.head_count"))
    hidden = int(meta.require("llama.embedding_length"))
    n_kv = int(meta.get("llama.attention.head_count_kv", n_head))
    head_dim = int(meta.get("llama.attention.key_length", hidden // n_head))
    if int(meta.get("llama.attention.value_length", head_dim)) != head_dim:
        raise EntmtpError(f"{meta.path}: key_length != value_length is not supported")
    rope_dim = int(meta.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise EntmtpError(f"{meta.path}: partial rope (rope.dimension_count={rope_dim}, "
                          f"head_dim={head_dim}) is not supported")
    if head_dim % 2 or n_head % n_kv:
        raise EntmtpError(f"{meta.path}: inconsistent heads (head_count={n_head}, "
                          f"head_count_kv={n_kv}, head_dim={head_dim})")
    tokens = meta.array("tokenizer.ggml.tokens")
    if tokens is None:
        raise EntmtpError(f"{meta.path}: GGUF has no tokenizer (tokenizer.ggml.tokens)")
    names = {t[0] for t in gf.tensors}
    if "rope_freqs.weight" in names:
        # Llama 3.1's rope scaling reaches GGUF only as this precomputed
        # per-frequency factor tensor; its llama3 parameters are not stored.
        raise EntmtpError(f"{meta.path}: per-frequency rope factors (rope_freqs.weight, as in "
                          "Llama 3.1) are not supported")
    return {
        "n_layer": int(meta.require("llama.block_count")),
        "hidden": hidden,
        "ffn": int(meta.require("llama.feed_forward_length")),
        "n_head": n_head,
        "n_kv": n_kv,
        "head_dim": head_dim,
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": _read_rope_scaling(meta),
        "rms_eps": float(meta.require("llama.attention.layer_norm_rms_epsilon")),
        "context": int(meta.get("llama.context_length", 2048)),
        "vocab": int(meta.get("llama.vocab_size", len(tokens))),
        "tied": "output.weight" not in names,
        "bias": any(n.endswith(".bias") and n.split(".")[2] in ("attn_q", "attn_k", "attn_v")
                    for n in names if n.startswith("blk.")),
        "bos": meta.get("tokenizer.ggml.bos_token_id"),
        "eos": meta.get("tokenizer.ggml.eos_token_id"),
        "pad": meta.get("tokenizer.ggml.padding_token_id"),
        "unk": meta.get("tokenizer.ggml.unknown_token_id"),
        "tokens": tokens,
    }


def _read_rope_scaling(meta: GGUFMetadata) -> Optional[dict]:
    """HF rope_parameters extras from llama.rope.scaling.*, or None for plain rope."""
    kind = meta.get("llama.rope.scaling.type")
    if kind is None:
        # Older files carry only a linear factor under this key.
        factor = meta.get("llama.rope.scale_linear")
        return None if factor in (None, 1.0) else {"rope_type": "linear", "factor": float(factor)}
    if kind == "none":
        return None
    if kind == "linear":
        factor = float(meta.require("llama.rope.scaling.factor"))
        return None if factor == 1.0 else {"rope_type": "linear", "factor": factor}
    raise EntmtpError(f"{meta.path}: rope scaling type {kind!r} is not supported "
                      "(none and linear are)")


def _hf_config(h: dict, dtype: str) -> dict:
    rope_parameters = {"rope_type": "default", "rope_theta": h["rope_theta"]}
    if h["rope_scaling"]:
        rope_parameters.update(h["rope_scaling"])
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": h["vocab"],
        "hidden_size": h["hidden"],
        "intermediate_size": h["ffn"],
        "num_hidden_layers": h["n_layer"],
        "num_attention_heads": h["n_head"],
        "num_key_value_heads": h["n_kv"],
        "head_dim": h["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": h["context"],
        "rms_norm_eps": h["rms_eps"],
        "rope_theta": h["rope_theta"],
        # transformers 5.x reads rope_parameters; 4.x reads rope_theta/rope_scaling.
        "rope_parameters": rope_parameters,
        "attention_bias": h["bias"],
        "mlp_bias": False,
        "tie_word_embeddings": h["tied"],
        "dtype": dtype,
    }
    if h["rope_scaling"]:
        config["rope_scaling"] = dict(h["rope_scaling"])
    for key in ("bos", "eos", "pad"):
        if h[key] is not None:
            config[f"{key}_token_id"] = int(h[key])
    return config


def _generation_config(h: dict) -> dict:
    return {f"{k}_token_id": int(h[k]) for k in ("bos", "eos", "pad") if h[k] is not None}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- tensors


def hf_name(gguf_name: str, path: Path) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    raise EntmtpError(f"{path}: tensor {gguf_name!r} is not part of a llama model entmtp can import")


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation.

    w: [n_head * head_dim, ...] (a weight [out, in] or a bias [out]). The GGUF
    rows of one head are ordered (d/2, 2) (pairs interleaved); HF wants (2, d/2)
    (first halves, then second halves).
    """
    rest = w.shape[1:]
    half = w.shape[0] // n_head // 2
    return np.ascontiguousarray(w.reshape(n_head, half, 2, *rest).swapaxes(1, 2).reshape(w.shape))


def _convert_tensors(gf: GGUFFile, h: dict, path: Path, dtype: str) -> dict:
    import gguf
    import torch

    torch_dtype = getattr(torch, _DTYPES[dtype])
    out: dict[str, "torch.Tensor"] = {}
    for gguf_name, shape, qtype, data in gf.tensors:
        name = hf_name(gguf_name, path)
        try:
            arr = gguf.quants.dequantize(data, qtype)
        except NotImplementedError:
            raise EntmtpError(f"{path}: tensor {gguf_name} has type {qtype.name}, "
                              "which the gguf package cannot dequantize") from None
        # F32 comes back as a read-only view of the memory map; torch wants a writable copy.
        if not arr.flags.writeable:
            arr = arr.copy()
        arr = arr.astype(np.float32, copy=False).reshape(shape)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            arr = unpermute_rope_rows(arr, h["n_head"])
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            arr = unpermute_rope_rows(arr, h["n_kv"])
        out[name] = torch.from_numpy(np.ascontiguousarray(arr)).to(torch_dtype)
    _check_shapes(out, h, path)
    return out


def _check_shapes(t: dict, h: dict, path: Path) -> None:
    """Every tensor a llama model needs is present with the shape the metadata implies."""
    hid, q, kv, ffn = h["hidden"], h["n_head"] * h["head_dim"], h["n_kv"] * h["head_dim"], h["ffn"]
    want = {"model.embed_tokens.weight": (h["vocab"], hid), "model.norm.weight": (hid,)}
    if not h["tied"]:
        want["lm_head.weight"] = (h["vocab"], hid)
    for i in range(h["n_layer"]):
        p = f"model.layers.{i}."
        want.update({
            p + "input_layernorm.weight": (hid,), p + "post_attention_layernorm.weight": (hid,),
            p + "self_attn.q_proj.weight": (q, hid), p + "self_attn.k_proj.weight": (kv, hid),
            p + "self_attn.v_proj.weight": (kv, hid), p + "self_attn.o_proj.weight": (hid, q),
            p + "mlp.gate_proj.weight": (ffn, hid), p + "mlp.up_proj.weight": (ffn, hid),
            p + "mlp.down_proj.weight": (hid, ffn),
        })
        if h["bias"]:
            want.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                         p + "self_attn.v_proj.bias": (kv,)})
    missing = sorted(set(want) - set(t))
    if missing:
        raise EntmtpError(f"{path}: missing tensors for a llama model: {', '.join(missing[:3])}"
                          + (" ..." if len(missing) > 3 else ""))
    extra = sorted(set(t) - set(want))
    if extra:
        raise EntmtpError(f"{path}: unexpected tensor {extra[0]} (block_count={h['n_layer']})")
    for name, shape in want.items():
        if tuple(t[name].shape) != shape:
            raise EntmtpError(f"{path}: tensor {name} has shape {tuple(t[name].shape)}, "
                              f"metadata implies {shape}")


def _save_safetensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------- tokenizer


def _build_tokenizer(meta: GGUFMetadata, h: dict):
    """Return (tokenizers.Tokenizer, tokenizer_config dict, chat template or None)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise EntmtpError(f"{meta.path}: tokenizer model {model!r} is not supported; entmtp imports "
                          "byte-level BPE (gpt2) tokenizers")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in SUPPORTED_PRE_TOKENIZERS:
        raise EntmtpError(f"{meta.path}: pre-tokenizer {pre!r} is not supported "
                          f"(supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)})")
    tokens: list[str] = h["tokens"]
    merges_raw = meta.array("tokenizer.ggml.merges") or []
    merges = []
    for m in merges_raw:
        parts = m.split(" ")
        if len(parts) != 2:
            raise EntmtpError(f"{meta.path}: malformed BPE merge {m!r}")
        merges.append((parts[0], parts[1]))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise EntmtpError(f"{meta.path}: the token list has duplicate tokens")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, byte_fallback=False))
    # smollm: split every digit off, then the GPT-2 regex on each piece.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    types = meta.array("tokenizer.ggml.token_type") or [1] * len(tokens)
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty == _TOKEN_CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types) if ty == _TOKEN_USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    def token_str(key: str) -> Optional[str]:
        i = h[key]
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    chat_template = meta.get("tokenizer.chat_template")
    config: dict[str, Any] = {
        # Not GPT2Tokenizer: transformers 5 would rebuild the pre-tokenizer as
        # plain ByteLevel and silently drop the digit split.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": h["context"],
    }
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("pad", "pad_token"),
                      ("unk", "unk_token")):
        if token_str(key) is not None:
            config[name] = token_str(key)
    if chat_template is not None:
        config["chat_template"] = chat_template
    return tok, config, chat_template
