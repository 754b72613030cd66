"""Draft heads: module math against independent references, every file layout, every error.

Upstream layouts (Medusa v0.1 .pt, Medusa "version 2" .safetensors, Medusa-2 full
checkpoints, Hydra mlp .pt) are written here from raw random tensors with the key
names those projects save; the references below compute the heads straight
from those raw tensors, one head at a time, without the module.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from entmtp.errors import EntmtpError
from entmtp.heads.formats import HeadsConfig, load_heads, save_heads
from entmtp.heads.modules import HydraHeads, MedusaHeads

H, V = 16, 40


def rand(*shape: int, gen: torch.Generator, scale: float = 0.4) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


# --------------------------------------------------------------------------- #
# Upstream state dicts and independent references
# --------------------------------------------------------------------------- #

def medusa_raw(n_heads: int, n_layers: int, own_lm: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    raw = {}
    for i in range(n_heads):
        for layer in range(n_layers):
            raw[f"{i}.{layer}.linear.weight"] = rand(H, H, gen=g)
            raw[f"{i}.{layer}.linear.bias"] = rand(H, gen=g)
        if own_lm:
            raw[f"{i}.{n_layers}.weight"] = rand(V, H, gen=g)
    return raw


def medusa_reference(raw, n_heads, n_layers, hidden, base_lm=None) -> torch.Tensor:
    """[n_heads, N, V], one head and one block at a time."""
    out = []
    for i in range(n_heads):
        x = hidden
        for layer in range(n_layers):
            x = x + F.silu(x @ raw[f"{i}.{layer}.linear.weight"].T + raw[f"{i}.{layer}.linear.bias"])
        lm = raw.get(f"{i}.{n_layers}.weight", base_lm)
        out.append(x @ lm.T)
    return torch.stack(out)


def hydra_raw(n_heads: int, n_layers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Hydra `mlp` grounded layout; the plain blocks share one tensor per head, as upstream."""
    g = torch.Generator().manual_seed(seed)
    raw = {}
    for i in range(n_heads):
        for part in ("linear", "res_connection"):
            raw[f"hydra_mlp.{i}.0.{part}.weight"] = rand(H, H * (i + 2), gen=g)
            raw[f"hydra_mlp.{i}.0.{part}.bias"] = rand(H, gen=g)
        shared_w, shared_b = rand(H, H, gen=g), rand(H, gen=g)
        for j in range(1, n_layers):
            raw[f"hydra_mlp.{i}.{j}.linear.weight"] = shared_w
            raw[f"hydra_mlp.{i}.{j}.linear.bias"] = shared_b
        raw[f"hydra_lm_head.{i}.weight"] = rand(V, H, gen=g)
        raw[f"hydra_lm_head.{i}.bias"] = rand(V, gen=g)
    return raw


def hydra_reference(raw, i, n_layers, hidden, path_embeds) -> torch.Tensor:
    """Head i on P paths: z = [h, E(root), E(d_1), ...] -> [P, V]."""
    P, d, _ = path_embeds.shape
    z = torch.cat([hidden.expand(P, H)] + [path_embeds[:, j] for j in range(d)], dim=-1)
    p = f"hydra_mlp.{i}.0."
    y = (z @ raw[p + "res_connection.weight"].T + raw[p + "res_connection.bias"]
         + F.silu(z @ raw[p + "linear.weight"].T + raw[p + "linear.bias"]))
    for j in range(1, n_layers):
        y = y + F.silu(y @ raw[f"hydra_mlp.{i}.{j}.linear.weight"].T + raw[f"hydra_mlp.{i}.{j}.linear.bias"])
    return y @ raw[f"hydra_lm_head.{i}.weight"].T + raw[f"hydra_lm_head.{i}.bias"]


def randomize(heads: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(rand(*p.shape, gen=g))
    return heads


def hydra_config(**overrides) -> dict:
    cfg = {"base_model_name_or_path": "lmsys/vicuna-13b-v1.3", "grounded_heads": True,
           "hidden_state_offset": 0, "hydra_head_arch": "mlp", "hydra_num_heads": 3,
           "hydra_num_layers": 3, "transformers_version": "4.33.2"}
    cfg.update(overrides)
    return cfg


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


@pytest.fixture
def hidden() -> torch.Tensor:
    return torch.randn(3, H, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def base_lm() -> torch.Tensor:
    return torch.randn(V, H, generator=torch.Generator().manual_seed(8)) * 0.4


# --------------------------------------------------------------------------- #
# Medusa layouts
# --------------------------------------------------------------------------- #

def test_medusa_pt_counts_heads_from_keys_not_config(tmp_path, hidden):
    # The released medusa-vicuna-7b config says 2 heads while the .pt holds 5.
    raw = medusa_raw(5, 1, own_lm=True)
    torch.save(raw, tmp_path / "medusa_lm_head.pt")
    write_json(tmp_path / "config.json", {"base_model_name_or_path": "lmsys/vicuna-7b-v1.3",
                                          "medusa_num_heads": 2, "medusa_num_layers": 1,
                                          "transformers_version": "4.31.0"})
    heads = load_heads(tmp_path, hidden_size=H, vocab_size=V)
    assert isinstance(heads, MedusaHeads)
    assert (heads.n_heads, heads.n_layers, heads.shared_lm_head) == (5, 1, False)
    assert torch.equal(heads.block_weight[4, 0], raw["4.0.linear.weight"])
    assert torch.equal(heads.lm_head[3], raw["3.1.weight"])
    torch.testing.assert_close(heads(hidden, None), medusa_reference(raw, 5, 1, hidden),
                               rtol=1e-5, atol=1e-5)


def test_medusa_version2_safetensors_reuses_base_lm_head(tmp_path, hidden, base_lm):
    raw = medusa_raw(3, 2, own_lm=False)
    save_file(raw, str(tmp_path / "medusa_lm_head.safetensors"))
    heads = load_heads(tmp_path / "medusa_lm_head.safetensors", hidden_size=H, vocab_size=V)
    assert (heads.n_heads, heads.n_layers, heads.shared_lm_head) == (3, 2, True)
    assert heads.lm_head is None
    torch.testing.assert_close(heads(hidden, base_lm), medusa_reference(raw, 3, 2, hidden, base_lm),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="base_lm_head"):
        heads(hidden, None)


def _write_medusa2(folder: Path, layout: str, raw: dict) -> None:
    base = {"model.embed_tokens.weight": torch.randn(V, H), "lm_head.weight": torch.randn(V, H),
            "model.norm.weight": torch.ones(H)}
    heads = {"medusa_head." + k: v for k, v in raw.items()}
    if layout == "single-safetensors":
        save_file({**base, **heads}, str(folder / "model.safetensors"))
    elif layout == "sharded-safetensors":
        save_file(base, str(folder / "model-00001-of-00002.safetensors"))
        save_file(heads, str(folder / "model-00002-of-00002.safetensors"))
        weight_map = {k: "model-00001-of-00002.safetensors" for k in base}
        weight_map.update({k: "model-00002-of-00002.safetensors" for k in heads})
        write_json(folder / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    elif layout == "bin":
        torch.save({**base, **heads}, folder / "pytorch_model.bin")
    write_json(folder / "config.json", {"model_type": "llama", "medusa_num_heads": 1,
                                        "medusa_num_layers": 1})


@pytest.mark.parametrize("layout", ["single-safetensors", "sharded-safetensors", "bin"])
def test_medusa2_full_checkpoint_reads_only_head_keys(tmp_path, hidden, layout):
    raw = medusa_raw(4, 1, own_lm=True, seed=3)
    _write_medusa2(tmp_path, layout, raw)
    heads = load_heads(tmp_path, hidden_size=H, vocab_size=V, kind="medusa")
    assert (heads.n_heads, heads.n_layers, heads.shared_lm_head) == (4, 1, False)
    torch.testing.assert_close(heads(hidden, None), medusa_reference(raw, 4, 1, hidden),
                               rtol=1e-5, atol=1e-5)


def test_medusa2_single_file_path(tmp_path, hidden):
    raw = medusa_raw(2, 1, own_lm=True, seed=4)
    _write_medusa2(tmp_path, "single-safetensors", raw)
    heads = load_heads(tmp_path / "model.safetensors", hidden_size=H, vocab_size=V)
    torch.testing.assert_close(heads(hidden, None), medusa_reference(raw, 2, 1, hidden),
                               rtol=1e-5, atol=1e-5)


def test_load_dtype_casts(tmp_path):
    raw = {k: v.half() for k, v in medusa_raw(2, 1, own_lm=True).items()}
    torch.save(raw, tmp_path / "medusa_lm_head.pt")
    assert load_heads(tmp_path, hidden_size=H, vocab_size=V).block_weight.dtype == torch.float16
    heads = load_heads(tmp_path, hidden_size=H, vocab_size=V, dtype=torch.bfloat16)
    assert heads.block_weight.dtype == torch.bfloat16 and heads.lm_head.dtype == torch.bfloat16


# --------------------------------------------------------------------------- #
# propose against a per-head loop
# --------------------------------------------------------------------------- #

def _per_head_loop(heads: MedusaHeads, h: torch.Tensor, base_lm) -> torch.Tensor:
    """fp32 logits [n_heads, V] from the module's weights, one head at a time."""
    rows = []
    for i in range(heads.n_heads):
        x = h.float()
        for layer in range(heads.n_layers):
            x = x + F.silu(F.linear(x, heads.block_weight[i, layer].float(), heads.block_bias[i, layer].float()))
        lm = heads.lm_head[i] if heads.lm_head is not None else base_lm
        rows.append(F.linear(x, lm.float()))
    return torch.stack(rows)


@pytest.mark.parametrize("shared", [False, True])
def test_propose_matches_per_head_loop_fp32(shared, base_lm):
    heads = randomize(MedusaHeads(4, 2, H, V, shared_lm_head=shared))
    h = torch.randn(H, generator=torch.Generator().manual_seed(11))
    ids, probs = heads.propose(h, base_lm, top_k=6)
    assert ids.dtype == torch.int64 and probs.dtype == torch.float32 and ids.shape == (4, 6)
    ref = torch.topk(torch.softmax(_per_head_loop(heads, h, base_lm), -1), 6, dim=-1)
    assert torch.equal(ids, ref.indices)
    torch.testing.assert_close(probs, ref.values, rtol=1e-5, atol=1e-6)
    # [1, H] input is the same call.
    assert torch.equal(heads.propose(h[None], base_lm, top_k=6)[0], ids)


@pytest.mark.parametrize("shared", [False, True])
def test_propose_bf16_close_to_fp32_loop(shared, base_lm):
    heads = randomize(MedusaHeads(3, 1, H, V, shared_lm_head=shared)).to(torch.bfloat16)
    base = base_lm.bfloat16()
    h = torch.randn(H, generator=torch.Generator().manual_seed(12)).bfloat16()
    ids, probs = heads.propose(h, base, top_k=5)
    assert probs.dtype == torch.float32
    ref_probs = torch.softmax(_per_head_loop(heads, h, base), -1)
    # bf16 rounding may swap near-ties, so check each returned id's probability and the
    # ordering instead of exact ids.
    torch.testing.assert_close(probs, ref_probs.gather(1, ids), rtol=0, atol=2e-2)
    torch.testing.assert_close(probs, torch.topk(ref_probs, 5).values, rtol=0, atol=2e-2)
    assert torch.all(probs[:, :-1] >= probs[:, 1:])


# --------------------------------------------------------------------------- #
# Hydra
# --------------------------------------------------------------------------- #

def test_hydra_pt_with_shared_blocks(tmp_path, hidden):
    raw = hydra_raw(3, 3)
    torch.save(raw, tmp_path / "hydra_lm_head.pt")
    write_json(tmp_path / "config.json", hydra_config(hydra_num_heads=1))  # counts come from keys
    heads = load_heads(tmp_path, hidden_size=H, vocab_size=V, kind="hydra")
    assert isinstance(heads, HydraHeads)
    assert (heads.n_heads, heads.n_layers, heads.shared_lm_head) == (3, 3, False)
    g = torch.Generator().manual_seed(5)
    for i in range(3):
        embeds = torch.randn(4, i + 1, H, generator=g)
        torch.testing.assert_close(heads.forward_paths(hidden[:1], embeds, i, None),
                                   hydra_reference(raw, i, 3, hidden[:1], embeds), rtol=1e-5, atol=1e-5)


def test_hydra_forward_paths_per_path_hidden_and_order(hidden, base_lm):
    heads = randomize(HydraHeads(2, 2, H, V, shared_lm_head=True))
    embeds = torch.randn(3, 2, H, generator=torch.Generator().manual_seed(6))
    batched = heads.forward_paths(hidden, embeds, 1, base_lm)
    for p in range(3):
        alone = heads.forward_paths(hidden[p], embeds[p:p + 1], 1, base_lm)
        torch.testing.assert_close(batched[p:p + 1], alone, rtol=1e-5, atol=1e-5)
    # The root embedding comes first: swapping root and draft changes the result.
    swapped = heads.forward_paths(hidden, embeds.flip(1), 1, base_lm)
    assert not torch.allclose(batched, swapped)
    with pytest.raises(ValueError, match=r"\[P, 2, 16\]"):
        heads.forward_paths(hidden, embeds[:, :1], 1, base_lm)


@pytest.mark.parametrize("shared", [False, True])
def test_hydra_propose_level_equals_forward_paths_topk(shared, base_lm):
    heads = randomize(HydraHeads(3, 2, H, V, shared_lm_head=shared))
    embed = torch.randn(V, H, generator=torch.Generator().manual_seed(9))
    h = torch.randn(H, generator=torch.Generator().manual_seed(10))
    for d in (1, 2, 3):
        paths = torch.randint(0, V, (5, d), generator=torch.Generator().manual_seed(d))
        ids, probs = heads.propose_level(h, paths, embed, base_lm, top_k=4)
        logits = heads.forward_paths(h.expand(5, H), embed[paths], d - 1, base_lm)
        ref = torch.topk(torch.softmax(logits.float(), -1), 4, dim=-1)
        assert torch.equal(ids, ref.indices) and torch.equal(probs, ref.values)


@pytest.mark.parametrize("config, extra_keys, message", [
    (hydra_config(hydra_head_arch="prefix-mlp"), {}, "prefix-mlp"),
    (hydra_config(), {"prefix_embeding_layer.norm.weight": torch.ones(H)}, "prefix-mlp"),
    (hydra_config(hidden_state_offset=1), {}, "hidden_state_offset=1"),
    (hydra_config(grounded_heads=False), {}, "not grounded"),
    (hydra_config(hydra_head_arch="cross-attn"), {}, "'cross-attn'"),
])
def test_hydra_unsupported_variants_rejected(tmp_path, config, extra_keys, message):
    torch.save({**hydra_raw(2, 1), **extra_keys}, tmp_path / "hydra_lm_head.pt")
    write_json(tmp_path / "config.json", config)
    with pytest.raises(EntmtpError, match=message):
        load_heads(tmp_path, hidden_size=H, vocab_size=V)


def test_hydra_ungrounded_keys_rejected_without_config(tmp_path):
    raw = {k: v for k, v in hydra_raw(1, 1).items() if "res_connection" not in k}
    torch.save(raw, tmp_path / "hydra_lm_head.pt")
    with pytest.raises(EntmtpError, match="not grounded"):
        load_heads(tmp_path, hidden_size=H, vocab_size=V)


# --------------------------------------------------------------------------- #
# Our format
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("cls", [MedusaHeads, HydraHeads])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_own_format_roundtrip_exact(tmp_path, cls, shared, dtype, hidden, base_lm):
    n_layers = 1 if cls is HydraHeads and shared else 2  # Hydra with zero plain blocks too
    heads = randomize(cls(3, n_layers, H, V, shared_lm_head=shared)).to(dtype)
    meta = {"base_model": {"name": "tiny", "hidden_size": H}, "training": {"steps": 3}}
    save_heads(heads, tmp_path / "out", meta)
    doc = json.loads((tmp_path / "out" / "entmtp_heads.json").read_text())
    assert doc == {"format": "entmtp-heads/1", "kind": heads.kind, "n_heads": 3, "n_layers": n_layers,
                   "hidden_size": H, "vocab_size": V, "shared_lm_head": shared, **meta}
    back = load_heads(tmp_path / "out", hidden_size=H, vocab_size=V)
    assert type(back) is cls and back.metadata == meta
    for (k, a), (k2, b) in zip(heads.state_dict().items(), back.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    h, lm = hidden.to(dtype), base_lm.to(dtype)
    if cls is MedusaHeads:
        assert torch.equal(heads(h, lm), back(h, lm))
        assert all(torch.equal(a, b) for a, b in zip(heads.propose(h[0], lm, 3), back.propose(h[0], lm, 3)))
    else:
        paths = torch.tensor([[1, 2], [3, 4]])
        embed = torch.randn(V, H).to(dtype)
        a, b = (x.propose_level(h[0], paths, embed, lm, 3) for x in (heads, back))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_heads_config_rejects_unknown_and_bad_values():
    good = {"format": "entmtp-heads/1", "kind": "medusa", "n_heads": 2, "n_layers": 1,
            "hidden_size": H, "vocab_size": V, "shared_lm_head": True, "base_model": {}, "training": {}}
    assert HeadsConfig.from_json(good, "x").n_heads == 2
    with pytest.raises(EntmtpError, match="unknown keys: medusa_num_heads"):
        HeadsConfig.from_json({**good, "medusa_num_heads": 5}, "x")
    with pytest.raises(EntmtpError, match="format must be"):
        HeadsConfig.from_json({**good, "format": "entmtp-heads/2"}, "x")
    with pytest.raises(EntmtpError, match="missing keys: training"):
        HeadsConfig.from_json({k: v for k, v in good.items() if k != "training"}, "x")
    with pytest.raises(EntmtpError, match="n_heads must be a positive integer"):
        HeadsConfig.from_json({**good, "n_heads": True}, "x")
    with pytest.raises(EntmtpError, match="kind must be one of"):
        HeadsConfig.from_json({**good, "kind": "eagle"}, "x")


@pytest.mark.parametrize("cls", [MedusaHeads, HydraHeads])
def test_init_lm_heads_from_base(cls, base_lm):
    heads = cls(2, 1, H, V, shared_lm_head=False)
    heads.init_lm_heads_from(base_lm)
    assert torch.equal(heads.lm_head[1], base_lm)
    cls(2, 1, H, V, shared_lm_head=True).init_lm_heads_from(base_lm)  # no-op


def test_save_rejects_unknown_metadata(tmp_path):
    with pytest.raises(EntmtpError, match="unknown keys: notes"):
        save_heads(MedusaHeads(1, 1, H, V, True), tmp_path, {"notes": "x"})


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #

def _error(path, **kw) -> str:
    with pytest.raises(EntmtpError) as info:
        load_heads(path, **{"hidden_size": H, "vocab_size": V, **kw})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_size_mismatch_messages(tmp_path):
    torch.save(medusa_raw(2, 1, own_lm=True), tmp_path / "medusa_lm_head.pt")
    assert _error(tmp_path, hidden_size=576).startswith("heads expect hidden size 16 but the model has 576")
    assert _error(tmp_path, vocab_size=49152).startswith("heads expect vocab size 40 but the model has 49152")
    save_heads(randomize(HydraHeads(1, 1, H, V, True)), tmp_path / "ours", {})
    assert _error(tmp_path / "ours", hidden_size=32).startswith("heads expect hidden size 16 but the model has 32")


def test_unexpected_missing_and_misshapen_keys(tmp_path):
    f = tmp_path / "medusa_lm_head.safetensors"
    extra = {f"junk.{n}": torch.zeros(1) for n in range(7)}
    save_file({**medusa_raw(2, 1, own_lm=True), **extra}, str(f))
    assert _error(f) == (f"heads file {f} has unexpected keys: junk.0, junk.1, junk.2, junk.3, "
                         "junk.4, … (7 in all)")
    raw = medusa_raw(2, 1, own_lm=True)
    del raw["1.0.linear.bias"]
    save_file(raw, str(f))
    assert _error(f) == f"heads file {f} is missing keys: 1.0.linear.bias"
    raw = medusa_raw(2, 1, own_lm=True)
    raw["1.0.linear.weight"] = torch.zeros(H, H + 1)
    save_file(raw, str(f))
    assert "1.0.linear.weight has shape [16, 17], expected [16, 16]" in _error(f)
    raw = hydra_raw(2, 2)
    del raw["hydra_lm_head.1.bias"]
    torch.save(raw, tmp_path / "hydra_lm_head.pt")
    assert _error(tmp_path / "hydra_lm_head.pt").endswith("is missing keys: hydra_lm_head.1.bias")


def test_own_format_tensor_mismatch(tmp_path):
    save_heads(randomize(MedusaHeads(2, 1, H, V, False)), tmp_path, {})
    doc = json.loads((tmp_path / "entmtp_heads.json").read_text())
    write_json(tmp_path / "entmtp_heads.json", {**doc, "shared_lm_head": True})
    assert "has unexpected keys: lm_head" in _error(tmp_path)
    write_json(tmp_path / "entmtp_heads.json", {**doc, "n_layers": 3})
    assert "block_weight has shape [2, 1, 16, 16], expected [2, 3, 16, 16]" in _error(tmp_path)
    write_json(tmp_path / "entmtp_heads.json", {**doc, "extra": 1})
    assert "unknown keys: extra" in _error(tmp_path)


@pytest.mark.parametrize("name", ["medusa_lm_head.safetensors", "medusa_lm_head.pt", "heads.safetensors"])
def test_corrupt_files(tmp_path, name):
    if name == "heads.safetensors":
        save_heads(MedusaHeads(1, 1, H, V, True), tmp_path, {})
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])  # truncated
    else:
        (tmp_path / name).write_bytes(b"\x00garbage, not a tensor file" * 3)
    assert _error(tmp_path).startswith("cannot read heads file ")


def test_not_a_state_dict_and_no_head_keys(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "medusa_lm_head.pt")
    assert "does not hold a state_dict" in _error(tmp_path)
    torch.save({"model.norm.weight": torch.ones(H)}, tmp_path / "medusa_lm_head.pt")
    assert "holds no Medusa head keys" in _error(tmp_path)


def test_missing_path_empty_dir_and_kind(tmp_path):
    assert _error(tmp_path / "nope") == f"heads path {tmp_path / 'nope'} does not exist"
    assert _error(tmp_path).startswith(f"no draft heads in {tmp_path}")
    torch.save(medusa_raw(1, 1, own_lm=True), tmp_path / "medusa_lm_head.pt")
    assert _error(tmp_path, kind="hydra") == f"heads at {tmp_path} are medusa heads, not hydra"
    assert "kind must be one of" in _error(tmp_path, kind="eagle")
