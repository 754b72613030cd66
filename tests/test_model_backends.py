"""The measured backend choices of the model (entmtp.model.autotune): attention
(ours or torch's SDPA) and the bf16 GEMM (ours or oneDNN). Each backend meets the
op tests' error rule, the choice persists per machine, and forcing a backend
keeps greedy decoding token-identical to plain decoding in fp32."""
from __future__ import annotations

import json

import pytest
import torch
from test_ops_attention import assert_flash_rule, make_inputs, random_parents

from entmtp.decode.autoregressive import ArDecoder
from entmtp.decode.speculative import SpeculativeDecoder
from entmtp.errors import EntmtpError
from entmtp.heads.shipped import load_model_heads
from entmtp.model import attention, linear
from entmtp.model.autotune import MeasuredChoice
from entmtp.model.loader import load_model
from entmtp.reference import causal_tree_bits, tree_bits_from_parents
from entmtp.trees.files import load_tree


@pytest.mark.parametrize("backend", [attention.OURS, attention.SDPA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,L,kind", [(1, 300, "none"), (16, 256, "tree"), (64, 37, "tree"), (32, 0, "causal"),
                                      (8, 20, "causal")])
def test_step_attention_backends_meet_the_op_rule(backend, dtype, T, L, kind):
    q, k, v = make_inputs(1, T, 9, 3, L, 64, dtype, seed=T + L)
    bits = None if kind != "tree" else tree_bits_from_parents(random_parents(T, seed=T))
    step = attention.StepAttention(backend, bits, L, T, torch.device("cpu"), dtype)
    out = step(q, k, v, 0.125)
    assert out.shape == q.shape and out.is_contiguous() and out.dtype == dtype
    # The reference spells "causal" as a chain's bitmask.
    ref_bits = bits if bits is not None else causal_tree_bits(T)
    assert_flash_rule(q, k, v, ref_bits, 0.125, out)


def test_measured_choice_persists_and_env_forces(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTMTP_HOME", str(tmp_path))
    choice = MeasuredChoice("demo", ("a", "b"), env="ENTMTP_DEMO", default="a")
    calls = []

    def measure():
        calls.append(1)
        return {"a": 2.0, "b": 1.0}

    assert choice.choose("k", measure) == "b" and choice.choose("k", measure) == "b" and len(calls) == 1
    stored = json.loads(next((tmp_path / "demo").glob("*.json")).read_text())
    assert stored == {"k": "b"}
    again = MeasuredChoice("demo", ("a", "b"), env="ENTMTP_DEMO", default="a")
    assert again.choose("k", lambda: pytest.fail("measured twice")) == "b"  # read back from the file
    monkeypatch.setenv("ENTMTP_DEMO", "a")
    assert again.choose("k", measure) == "a"
    monkeypatch.setenv("ENTMTP_DEMO", "c")
    with pytest.raises(EntmtpError, match="ENTMTP_DEMO must be auto or one of a, b"):
        again.choose("k", measure)


def test_gemm_backends_agree():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 576, generator=g).bfloat16()
    w = (torch.randn(960, 576, generator=g) * 0.05).bfloat16()
    ref = x.double() @ w.double().T
    for forced in (linear.OURS, linear.ONEDNN):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ENTMTP_GEMM", forced)
            out = linear.bf16_linear(x, w)
        # bf16 output: within a couple of bf16 ulps of the fp64 product.
        assert ((out.double() - ref).abs() <= 2 ** -6 * ref.abs() + 1e-2).all(), forced


@pytest.fixture(scope="module")
def fp32_model(default_model_dir):
    return load_model(str(default_model_dir), torch.float32)


@pytest.mark.parametrize("backend", [attention.OURS, attention.SDPA])
def test_forced_attention_keeps_greedy_exact(fp32_model, monkeypatch, backend):
    monkeypatch.setenv("ENTMTP_ATTENTION", backend)
    loaded = fp32_model
    ids = loaded.tokenizer.encode_chat("List three prime numbers and explain why they are prime.")
    reference = ArDecoder(loaded.model).generate(ids, 24, loaded.eos_token_ids)
    spec = SpeculativeDecoder(loaded.model, load_model_heads(loaded, "hydra"), load_tree("tree16"))
    assert spec.generate(ids, 24, loaded.eos_token_ids).token_ids == reference.token_ids
