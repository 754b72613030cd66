"""The tensors of a model loaded with quantized weights (`--dtype q4_1|q8_0[-fp32]`).

Every 2-D weight (projections, embedding, an untied LM head) becomes a
QuantizedWeight; 1-D tensors (norms, biases) stay float in the activation dtype.
Where the folder was converted from a GGUF that is still there (the default model,
any `--model file.gguf`), each 2-D tensor the GGUF holds as Q4_1 or Q8_0 is taken
from the file's own blocks, as they are, whatever format `--dtype` names: that is
llama.cpp's model, bit for bit (the default model: Q4_1 projections, a Q8_0
embedding and tied LM head). Float tensors, from a GGUF or from a Hugging Face
folder, are quantized to the `--dtype` format with ggml's reference rounding.
A GGUF tensor in any other quantized format (K-quants, IQ formats ...) is refused.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from entmtp.errors import UsageError
from entmtp.model.checkpoint import SKIPPED_SUFFIXES, read_tensors
from entmtp.model.config import ModelConfig
from entmtp.model.quant import BLOCK, QTYPES, Precision, QuantizedWeight, quantize

_FLOAT_GGML_TYPES = ("F32", "F16", "BF16")


def gguf_blocks(gguf_path: Path, cfg: ModelConfig, precision: Precision) -> dict[str, QuantizedWeight]:
    """The 2-D tensors `gguf_path` holds as Q4_1 or Q8_0, by their Hugging Face names
    (q/k rows un-permuted as the conversion does: a permutation of whole rows, so the
    blocks are untouched)."""
    from entmtp.model.gguf_file import GGUFFile
    from entmtp.model.gguf_import import hf_name, unpermute_rope_rows

    out: dict[str, QuantizedWeight] = {}
    others: dict[str, int] = {}  # formats kept that --dtype did not name, and how many tensors
    for gguf_name, shape, qtype, data in GGUFFile(gguf_path).tensors:
        if len(shape) != 2:
            continue
        kind = qtype.name
        if kind in _FLOAT_GGML_TYPES:
            continue  # quantized from the folder's floats
        if kind.lower() not in QTYPES:
            raise UsageError(f"{gguf_path}: tensor {gguf_name} is {kind}, which --dtype {precision.name} cannot "
                             f"run as it is (entmtp runs Q4_1 and Q8_0 blocks); use --dtype bf16")
        name = hf_name(gguf_name, gguf_path)
        rows = np.array(data, dtype=np.uint8)  # [N, K / 32 * block bytes], out of the memory map
        if name.endswith("q_proj.weight"):
            rows = unpermute_rope_rows(rows, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            rows = unpermute_rope_rows(rows, cfg.num_key_value_heads)
        out[name] = QuantizedWeight(torch.from_numpy(np.ascontiguousarray(rows)), kind.lower())
        if kind.lower() != precision.weights:
            others[kind] = others.get(kind, 0) + 1
    if others and len(others) == len({q.qtype for q in out.values()}):  # none is in the format asked for
        kept = ", ".join(f"{n} in {k}" for k, n in sorted(others.items()))
        print(f"entmtp: --dtype {precision.name}: the GGUF's own blocks run as they are ({kept}); "
              f"only float tensors are quantized to {precision.weights}", file=sys.stderr)
    return out


def quantized_tensors(folder: Path, files: list[Path], precision: Precision,
                      cfg: ModelConfig) -> dict[str, "torch.Tensor | QuantizedWeight"]:
    from entmtp.model.registry import source_gguf

    source = source_gguf(folder)
    kept = gguf_blocks(source, cfg, precision) if source is not None else {}
    out: dict[str, torch.Tensor | QuantizedWeight] = dict(kept)
    for path in files:
        floats = read_tensors(path, select=lambda names: [
            n for n in names if n not in kept and not n.endswith(SKIPPED_SUFFIXES)], dtype=torch.float32)
        for name, t in floats.items():
            if t.dim() != 2:
                out[name] = t.to(precision.activations)
                continue
            if t.shape[1] % BLOCK:
                raise UsageError(f"{folder}: {name} has {t.shape[1]} columns, not a multiple of the {BLOCK}-weight "
                                 f"blocks of {precision.weights}; use --dtype bf16")
            out[name] = quantize(t, precision.weights)
    return out


def fused(parts: list[QuantizedWeight], precision: Precision) -> QuantizedWeight:
    """Row-wise concatenation (fused q/k/v and gate/up; quantized_tensors quantizes every
    2-D tensor, so all parts are quantized). Parts a GGUF stores in two
    different formats are all re-quantized to the `--dtype` format (said on stderr)."""
    if len({p.qtype for p in parts}) > 1:
        print(f"entmtp: fused weights come in {', '.join(sorted({p.qtype for p in parts}))}; "
              f"re-quantized to {precision.weights}", file=sys.stderr)
        parts = [quantize(p.float(), precision.weights) for p in parts]
    return QuantizedWeight(torch.cat([p.data for p in parts]).contiguous(), parts[0].qtype)
