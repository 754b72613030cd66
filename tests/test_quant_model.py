"""Models with quantized weights (--dtype q4_1 / q8_0 and their -fp32 forms).

The default model keeps its GGUF's own blocks (Q4_1 projections, Q8_0 embedding
and tied LM head); float tensors are quantized on load; formats entmtp cannot run
are refused with one line. With fp32 activations every method's greedy output
equals plain decoding of the same quantized model, token for token.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from entmtp.decode.methods import MethodOptions, make_decoder
from entmtp.errors import UsageError
from entmtp.model.gguf_file import GGUFFile
from entmtp.model.gguf_import import convert_gguf, unpermute_rope_rows
from entmtp.model.loader import load_model, parse_dtype
from entmtp.model.quant import QuantizedWeight

PROMPTS = ["Write a Python function that checks whether a number is prime.",
           "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether in April and May?",
           "Tell me a short story about a lighthouse keeper."]


@pytest.fixture(scope="module")
def q4_fp32(default_model_dir):
    return load_model(str(default_model_dir), parse_dtype("q4_1-fp32"))


@pytest.fixture(scope="module")
def fp32_float(default_model_dir):
    return load_model(str(default_model_dir), torch.float32)


def test_default_model_keeps_the_gguf_blocks(q4_fp32, default_gguf_path):
    model = q4_fp32.model
    assert q4_fp32.precision.name == "q4_1-fp32" and model.dtype == torch.float32
    assert isinstance(model.embed, QuantizedWeight) and model.embed.qtype == "q8_0"
    assert model.lm_head is model.embed  # tied: one object, one read per step
    layer = model.layers[3]
    assert isinstance(layer.qkv, QuantizedWeight) and layer.qkv.qtype == "q4_1"
    assert layer.qkv.shape == (960, 576) and layer.down.shape == (576, 1536)
    raw = {name: data for name, _, _, data in GGUFFile(default_gguf_path).tensors}
    assert torch.equal(model.embed.data, torch.from_numpy(np.array(raw["token_embd.weight"])))
    q_rows = unpermute_rope_rows(np.array(raw["blk.3.attn_q.weight"]), 9)
    assert torch.equal(layer.qkv.data[:576], torch.from_numpy(q_rows))
    assert torch.equal(layer.down.data, torch.from_numpy(np.array(raw["blk.3.ffn_down.weight"])))
    # 2.8x smaller than bf16 (Q4_1 is 0.625 bytes a weight, Q8_0 1.0625).
    assert sum(t.nbytes for t in (layer.qkv, layer.o, layer.gate_up, layer.down)) * 3 < 2 * 576 * 5664 * 2


def test_dequantized_weights_are_the_converted_ones(q4_fp32, fp32_float):
    # The fp32 folder holds gguf's dequantization (d * q and + m rounded apart); the
    # kernels' single rounding differs by at most one rounding step.
    for q, f in ((q4_fp32.model.layers[0].qkv, fp32_float.model.layers[0].qkv),
                 (q4_fp32.model.layers[29].gate_up, fp32_float.model.layers[29].gate_up),
                 (q4_fp32.model.embed, fp32_float.model.embed)):
        assert torch.allclose(q.float(), f, rtol=0, atol=3e-8)


def test_logits_follow_the_float_model(q4_fp32, fp32_float):
    ids = torch.tensor([q4_fp32.tokenizer.encode_chat(PROMPTS[0])])
    pos = torch.arange(ids.shape[1]).unsqueeze(0)
    outs = []
    for loaded in (q4_fp32, fp32_float):
        cache = loaded.model.new_cache(capacity=64)
        outs.append(loaded.model(ids, pos, cache, 0)[1][0].float())
    assert (outs[0] - outs[1]).abs().max().item() < 1e-3


@pytest.mark.parametrize("method,options", [
    ("hydra", MethodOptions(tree="tree16")),
    ("medusa", MethodOptions(tree="mc_sim_7b_63")),
    ("entmtp", MethodOptions(head_kind="hydra", task="gsm8k")),
])
def test_greedy_is_token_identical_to_ar_in_fp32(q4_fp32, method, options):
    eos = q4_fp32.eos_token_ids
    ar = make_decoder("ar", q4_fp32)
    spec = make_decoder(method, q4_fp32, options)
    accepted = 0
    for prompt in PROMPTS:
        ids = q4_fp32.tokenizer.encode_chat(prompt)
        want = ar.generate(ids, 32, eos)
        got = spec.generate(ids, 32, eos)
        assert got.token_ids == want.token_ids, prompt
        accepted += sum(r.accepted for r in got.records)
    assert accepted > 0  # real heads: speculation was exercised, not only bonus tokens


def test_hf_folder_is_quantized_on_load(tiny_gguf, tmp_path):
    path, hf = tiny_gguf()
    folder = convert_gguf(path, tmp_path / "tiny")  # a plain HF folder: no GGUF beside it
    loaded = load_model(str(folder), parse_dtype("q8_0-fp32"))
    layer = loaded.model.layers[1]
    assert layer.gate_up.qtype == "q8_0" and loaded.model.lm_head.qtype == "q8_0"
    up = torch.from_numpy(hf["model.layers.1.mlp.up_proj.weight"])
    got = layer.gate_up.float()[64:]
    # Q8_0 of the floats: half a quantization step (max |w| / 127) off, plus the fp16
    # rounding of the step itself (127 steps x 2^-11 relative).
    step = up.abs().reshape(up.shape[0], -1, 32).amax(-1, keepdim=True) / 127
    assert ((got - up).reshape(step.shape[0], -1, 32).abs() <= step * (0.5 + 127 * 2 ** -11)).all()


def test_formats_entmtp_cannot_run_are_refused(tiny_gguf, tmp_path, monkeypatch):
    import gguf

    from entmtp.model import quant_load
    path, _ = tiny_gguf()
    folder = convert_gguf(path, tmp_path / "tiny")
    real = GGUFFile

    class Q5File(real):  # the same file, one tensor declared Q5_0
        def __init__(self, p):
            super().__init__(p)
            name, shape, _, data = self.tensors[3]
            self.tensors[3] = (name, shape, gguf.GGMLQuantizationType.Q5_0, data)

    monkeypatch.setattr("entmtp.model.registry.source_gguf", lambda f: path)
    monkeypatch.setattr("entmtp.model.gguf_file.GGUFFile", Q5File)
    with pytest.raises(UsageError, match=r"tensor blk\.0\.\w+\.weight is Q5_0.*use --dtype bf16"):
        quant_load.quantized_tensors(folder, [folder / "model.safetensors"], parse_dtype("q4_1"),
                                     load_model(str(folder), torch.float32).config)


def test_shapes_off_the_block_size_are_refused(tiny_gguf, tmp_path):
    from safetensors.torch import load_file, save_file
    path, _ = tiny_gguf()
    folder = convert_gguf(path, tmp_path / "tiny")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.layers.0.mlp.down_proj.weight"] = torch.zeros(32, 48)  # K = 48
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UsageError, match="down_proj.weight has 48 columns, not a multiple of the 32"):
        load_model(str(folder), parse_dtype("q4_1"))


def test_quantized_dtypes_need_the_cpu():
    with pytest.raises(UsageError, match="runs on the CPU only"):
        load_model(None, parse_dtype("q4_1"), "cuda")
