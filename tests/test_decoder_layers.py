"""ops.decoder_layers (the layer loop as one op) against the Python layer loop.

It runs the same ops in the same order, so every output must be bit for bit the
Python loop's: hidden states, logits and the K/V written into the cache, for one
token and for a tree, with bf16 weights, GGUF blocks and a qkv bias (qwen2). Where
the Python loop would call something else (oneDNN's GEMM, SDPA), the model keeps
the Python loop.
"""
from __future__ import annotations

import pytest
import torch

from entmtp.model.attention import SDPA, StepAttention
from entmtp.model.loader import load_model, parse_dtype
from entmtp.reference import tree_bits_from_parents

PROMPT = 40


def _both_paths(model, T: int):
    """(fused, python) outputs of one forward of T new tokens after a PROMPT-token prefill."""
    generator = torch.Generator().manual_seed(T)
    cache = model.new_cache(1, PROMPT + T)
    vocab = model.config.vocab_size
    model.fused_layers = False
    model(torch.randint(0, vocab, (1, PROMPT), generator=generator), torch.arange(PROMPT)[None], cache, 0)
    parents = torch.tensor([-1] + [(i - 1) // 2 for i in range(1, T)])
    bits = tree_bits_from_parents(parents) if T > 1 else None
    depths = torch.zeros(T, dtype=torch.long)
    for i in range(1, T):
        depths[i] = depths[parents[i]] + 1
    tokens = torch.randint(0, vocab, (1, T), generator=generator)
    results = []
    for fused in (True, False):
        model.fused_layers = fused
        hidden, logits = model(tokens, (depths + PROMPT)[None], cache, PROMPT, tree_bits=bits)
        results.append((hidden.clone(), logits.clone(), cache.kv[:, :, :, :, PROMPT:PROMPT + T].clone()))
    model.fused_layers = True
    return results


def _assert_identical(results):
    (h1, l1, kv1), (h2, l2, kv2) = results
    assert torch.equal(h1, h2)
    assert torch.equal(l1, l2)
    assert torch.equal(kv1, kv2)


@pytest.fixture(scope="module", params=["bf16", "q4_1"])
def default_model(request, default_model_dir):
    return load_model(str(default_model_dir), parse_dtype(request.param)).model


@pytest.mark.parametrize("T", [1, 9])
def test_default_model_fused_equals_python_loop(default_model, T, monkeypatch):
    monkeypatch.setenv("ENTMTP_GEMM", "ours")
    monkeypatch.setenv("ENTMTP_ATTENTION", "ours")
    attend = StepAttention("ours", None, PROMPT, T, torch.device("cpu"), default_model.dtype)
    with torch.inference_mode():  # as in forward
        assert default_model._fused_stack(T, attend, default_model._layer_gemm(T)) is not None  # fused really runs
    _assert_identical(_both_paths(default_model, T))


def test_qkv_bias_fused_equals_python_loop(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from entmtp.model.config import ModelConfig
    from entmtp.model.loader import _read_tensors, _weight_files, build_model

    monkeypatch.setenv("ENTMTP_GEMM", "ours")
    monkeypatch.setenv("ENTMTP_ATTENTION", "ours")
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # biases start at zero: make them matter
    hf.save_pretrained(tmp_path)
    cfg = ModelConfig.from_folder(tmp_path)
    model = build_model(cfg, _read_tensors(_weight_files(tmp_path), torch.bfloat16), torch.device("cpu"))
    assert model.layers[0].qkv_bias is not None
    for T in (1, 5):
        _assert_identical(_both_paths(model, T))


def test_other_backends_keep_the_python_loop(default_model, monkeypatch):
    sdpa = StepAttention(SDPA, None, PROMPT, 4, torch.device("cpu"), default_model.dtype)
    ours = StepAttention("ours", None, PROMPT, 4, torch.device("cpu"), default_model.dtype)
    with torch.inference_mode():
        assert default_model._fused_stack(4, sdpa, default_model._layer_gemm(4)) is None
        if default_model.precision.weights is None:  # bf16 weights: the GEMM is a measured choice
            monkeypatch.setenv("ENTMTP_GEMM", "onednn")
            assert default_model._fused_stack(4, ours, default_model._layer_gemm(4)) is None
    assert default_model._fused_stack(4, ours, None) is None  # grad mode: training keeps torch's path


def test_a_layer_takes_one_gemm_backend_whatever_each_shape_measured(default_model, monkeypatch):
    """The per-shape choices may split (oneDNN for gate_up, ours for the rest, as measured at
    25 rows on a Zen4); a forward still runs one backend for all its layer matrices, the one
    measured on their sum, so where that is ours the one-op layer loop runs."""
    from entmtp.model import linear as gemm

    if default_model.precision.weights is not None:
        pytest.skip("GGUF blocks: the layer matrices take linear_quant, there is no GEMM choice")
    monkeypatch.delenv("ENTMTP_GEMM", raising=False)
    monkeypatch.setattr(gemm.CHOICE, "_plan", dict(gemm.CHOICE.plan()))  # restored after the test
    monkeypatch.setattr(gemm, "_memo", {})
    layer = default_model.layers[0]
    shapes = tuple(sorted({tuple(w.shape) for w in (layer.qkv, layer.o, layer.gate_up, layer.down)}))
    rows = 7
    for n, k in shapes:
        gemm.CHOICE._plan[f"{n}x{k}@{rows}"] = gemm.ONEDNN if (n, k) == tuple(layer.gate_up.shape) else gemm.OURS
    group = "+".join(f"{n}x{k}" for n, k in shapes)
    for backend in (gemm.OURS, gemm.ONEDNN):
        gemm.CHOICE._plan[f"{group}@{rows}"] = backend
        gemm._memo.clear()
        assert default_model._layer_gemm(rows) == backend
        attend = StepAttention("ours", None, PROMPT, rows, torch.device("cpu"), default_model.dtype)
        with torch.inference_mode():
            stack = default_model._fused_stack(rows, attend, default_model._layer_gemm(rows))
        assert (stack is not None) == (backend == gemm.OURS)


def test_bad_arguments_name_the_problem():
    x = torch.zeros(1, 8)
    with pytest.raises(RuntimeError, match="7 tensors per layer"):
        torch.ops.entmtp.decoder_layers(x, [x] * 6, [-1] * 4, x, x, torch.zeros(1, 2, 1, 1, 4, 8), 0, 1, None,
                                        1, 1, 1e-5, 1.0, x)


def test_where_the_loop_can_be_one_op_the_attention_is_chosen_on_a_whole_layer(default_model, monkeypatch):
    """SDPA alone can beat ours while the one-op layer loop with ours beats SDPA's Python loop
    (a 16-node verify on a Sapphire Rapids): so where ours would make the loop one op, the
    choice times one whole layer of the model each way, once per T and L, and keeps the faster."""
    from entmtp.model import attention

    monkeypatch.delenv("ENTMTP_ATTENTION", raising=False)
    monkeypatch.setenv("ENTMTP_GEMM", "ours")
    monkeypatch.setattr(attention.CHOICE, "_plan", {})
    monkeypatch.setattr(attention.CHOICE, "_loaded", True)    # nothing from this machine's cache
    monkeypatch.setattr(attention.CHOICE, "_save", lambda: None)
    measured = []
    real = default_model._measure_layer

    def measure(t, length):
        seconds = real(t, length)  # both backends really run on the model's first layer
        assert set(seconds) == {"ours", "sdpa"} and all(s > 0 for s in seconds.values())
        measured.append((t, length))
        return {"ours": 2.0, "sdpa": 1.0} if len(measured) == 1 else {"ours": 1.0, "sdpa": 2.0}

    monkeypatch.setattr(default_model, "_measure_layer", measure)
    bits = tree_bits_from_parents(torch.tensor([-1, 0, 0, 1, 1, 2, 2, 3, 3]))
    with torch.inference_mode():
        backend = default_model._layer_gemm(9)
        first = default_model._step_attention(bits, PROMPT, 9, backend)
        again = default_model._step_attention(bits, PROMPT + 50, 9, backend)   # same buckets: no new timing
        other = default_model._step_attention(bits, 300, 9, backend)
        assert measured == [(9, 128), (9, 512)]
        assert (first.backend, again.backend, other.backend) == ("sdpa", "sdpa", "ours")
        assert default_model._fused_stack(9, other, backend) is not None
        assert default_model._fused_stack(9, first, backend) is None
        default_model.fused_layers = False  # no one-op loop to win: the attention op alone decides
        try:
            monkeypatch.setattr(attention, "choose", lambda *args: "ours")
            assert default_model._step_attention(bits, 2000, 9, backend).backend == "ours"
        finally:
            default_model.fused_layers = True
    assert len(measured) == 2
