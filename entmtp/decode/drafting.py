"""Drafting copies: what the heads project onto and multiply by while drafting, in the
form that drafts fastest on this machine. Drafts only change speed, never output (the
base model verifies every token), so in bf16 on the CPU these are Q8_0 copies of the
bf16 weights: half the bytes, through the int8 kernel (csrc/kernels/linear_quant.h).
Made once per model or heads object and shared by its decoders (a bank build makes one
per candidate tree)."""
from __future__ import annotations

import weakref
from typing import Optional

import torch

from entmtp.heads.modules import HydraHeads
from entmtp.model.llama import LlamaModel
from entmtp.model.quant import BLOCK, QuantizedWeight, quantize

# model -> (its LM head, {draft ids (bytes, b"" for the whole vocabulary): the Q8_0 drafting
# copy}), so the decoders of one model (a bank build makes one per candidate tree) quantize it
# once. Keyed by the model, not the head: a tensor's == is elementwise, which weak keys compare.
_Q8_DRAFT_HEADS: "weakref.WeakKeyDictionary[LlamaModel, tuple]" = weakref.WeakKeyDictionary()


def draft_head_for(model: LlamaModel, heads, draft_ids: Optional[torch.Tensor]):
    """The LM head drafting projects onto: the base head's rows `draft_ids` (all without a
    draft vocabulary), as a Q8_0 copy where the base head is bf16 on the CPU (half the bytes,
    through the int8 kernel). Drafting streams it once per head level (Hydra: four times a
    step), and drafts only change speed, never output. Measured on a 2-core Zen4, Hydra with
    tree8, 24 evaluation prompts x 96 tokens, interleaved: with the draft vocabulary
    tokens/step 1.863 against 1.859 and tok/s 1.054x per prompt, over the whole vocabulary
    1.875 against 1.876 and 1.052x; the same tokens on every prompt."""
    base = model.lm_head
    rows = base if draft_ids is None else base.index_select(0, draft_ids).contiguous()
    if (not heads.shared_lm_head or isinstance(base, QuantizedWeight) or model.device.type != "cpu"
            or model.dtype != torch.bfloat16 or base.shape[1] % BLOCK):
        return rows
    head, copies = _Q8_DRAFT_HEADS.get(model, (None, None))
    if head is not base:  # first use, or the model's head was replaced since
        copies = {}
        _Q8_DRAFT_HEADS[model] = (base, copies)
    key = b"" if draft_ids is None else draft_ids.cpu().numpy().tobytes()
    if key not in copies:
        copies[key] = quantize(rows.float(), "q8_0")
    return copies[key]


# heads -> (the weights' identity and versions, [per head: its first block as Q8_0]).
_Q8_DRAFT_BLOCKS: "weakref.WeakKeyDictionary[HydraHeads, tuple]" = weakref.WeakKeyDictionary()


def draft_blocks_for(model: LlamaModel, heads) -> Optional[list]:
    """Hydra heads drafting in bf16 on the CPU: each head's first block (R_i over A_i, one
    [2H, H*(i+2)] matrix, HydraHeads.first_block) as a Q8_0 copy, for propose_level; else
    None (the module's own weights). Why: drafting runs right after a verify pass has
    streamed the whole model through the caches, so a head level reads its weights from
    memory: bf16 R_i and A_i of heads 0-2 are 11.9 MB a tree8 step, Q8_0 6.3 MB, in one GEMM
    instead of two. Drafts only change speed, never output."""
    if (not isinstance(heads, HydraHeads) or model.device.type != "cpu" or model.dtype != torch.bfloat16
            or heads.hidden_size % BLOCK):
        return None
    weights = list(heads.res_weight) + list(heads.cond_weight)
    stamp = tuple((w.data_ptr(), w._version) for w in weights)
    got = _Q8_DRAFT_BLOCKS.get(heads)
    if got is None or got[0] != stamp:  # first use, or the weights changed since (training)
        with torch.no_grad():
            blocks = [quantize(heads.first_block(i).float(), "q8_0") for i in range(heads.n_heads)]
        got = _Q8_DRAFT_BLOCKS[heads] = (stamp, blocks)
    return got[1]
