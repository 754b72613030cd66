"""Weights kept in GGUF's quantized blocks (Q4_1, Q8_0), and the model dtypes that use them.

A `QuantizedWeight` is a [N, K] matrix held as its uint8 blocks [N, K / 32 * block
bytes], exactly as a GGUF stores them (no dequantized copy): projections go through
`torch.ops.entmtp.linear_quant` (csrc/kernels/linear_quant.h), embedding rows are
dequantized as they are looked up, and a tied LM head is the same object.

Model dtypes (`--dtype`): bf16, fp32, fp16 keep float weights; q4_1 and q8_0 keep
quantized weights with bf16 activations, the fast form: a matmul of a few rows
(plain decoding, the heads' proposals, small trees; up to
torch.ops.entmtp.linear_quant_int8_rows(): 4 on amx, 8 on avx512bf16, 32 on avx2)
rounds its activations to int8 per block as llama.cpp does, larger ones use bf16
products, so speculative greedy output agrees with plain decoding only
approximately (bench reports the rate);
q4_1-fp32 and q8_0-fp32 keep the same weights with fp32 activations (the exactness
contract: speculative output equals plain decoding of the same quantized model,
token for token).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from entmtp import reference

# Our name -> (linear_quant's qtype, bytes per 32-weight block).
QTYPES = {name: (qtype, nbytes) for qtype, (name, nbytes) in reference.QTYPES.items()}
BLOCK = 32


@dataclasses.dataclass(frozen=True)
class Precision:
    """What `--dtype NAME` means: the activation dtype, and the weights' block format (None: float)."""
    name: str
    activations: torch.dtype
    weights: Optional[str] = None


PRECISIONS = {p.name: p for p in (
    Precision("bf16", torch.bfloat16), Precision("fp32", torch.float32), Precision("fp16", torch.float16),
    Precision("q4_1", torch.bfloat16, "q4_1"), Precision("q8_0", torch.bfloat16, "q8_0"),
    Precision("q4_1-fp32", torch.float32, "q4_1"), Precision("q8_0-fp32", torch.float32, "q8_0"),
)}
_FLOAT_NAMES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}


def precision_of(dtype: "Precision | torch.dtype") -> Precision:
    """A Precision, given one or a plain torch dtype (float weights in that dtype)."""
    if isinstance(dtype, Precision):
        return dtype
    return PRECISIONS[_FLOAT_NAMES[dtype]]


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    data: torch.Tensor  # uint8 [N, K / 32 * block bytes], contiguous, on the CPU
    qtype: str          # "q4_1" or "q8_0"

    @property
    def shape(self) -> tuple[int, int]:
        n, row_bytes = self.data.shape
        return n, row_bytes // QTYPES[self.qtype][1] * BLOCK

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [M, K] (bf16 or fp32) @ dequantized [N, K].T (+ bias) -> [M, N] in x's dtype."""
        return torch.ops.entmtp.linear_quant(x, self.data, QTYPES[self.qtype][0], bias)

    def index_select(self, dim: int, ids: torch.Tensor) -> "QuantizedWeight":
        """The rows `ids` (dim 0), still quantized: a draft vocabulary's LM head."""
        if dim != 0:
            raise ValueError("a quantized weight selects rows (dim 0) only")
        return QuantizedWeight(self.data.index_select(0, ids.to(self.data.device)), self.qtype)

    def contiguous(self) -> "QuantizedWeight":
        return self

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows fp32 [*ids.shape, K] (an embedding lookup)."""
        flat = ids.reshape(-1).to(self.data.device)
        return reference.dequantize_ref(self.data.index_select(0, flat), QTYPES[self.qtype][0]).view(
            *ids.shape, -1)

    def float(self) -> torch.Tensor:
        """The whole matrix dequantized, fp32 [N, K] (training and reference code only)."""
        return reference.dequantize_ref(self.data, QTYPES[self.qtype][0])


def embedding(ids: torch.Tensor, weight: "torch.Tensor | QuantizedWeight", dtype: Optional[torch.dtype] = None
              ) -> torch.Tensor:
    """Rows `ids` of an embedding matrix [V, H] -> [*ids.shape, H] (in `dtype`, default weight's)."""
    if isinstance(weight, QuantizedWeight):
        return weight.rows(ids).to(dtype or torch.float32)
    out = F.embedding(ids, weight)
    return out if dtype is None else out.to(dtype)


def quantize(weight: torch.Tensor, qtype: str) -> QuantizedWeight:
    """A float [N, K] matrix in `qtype` blocks, with ggml's reference rounding (the gguf package's)."""
    import gguf

    n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"K={k} is not a multiple of the {BLOCK}-weight block")
    kind = gguf.GGMLQuantizationType[qtype.upper()]
    blocks = gguf.quants.quantize(weight.detach().float().cpu().numpy(), kind)  # uint8 [N, K/32 * bytes]
    return QuantizedWeight(torch.from_numpy(np.ascontiguousarray(blocks)), qtype)

