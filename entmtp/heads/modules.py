"""Draft heads for self-speculative decoding: Medusa heads and Hydra (grounded) heads.

Both read the base model's final hidden state *after* the final RMSNorm, i.e. the
tensor the base ``lm_head`` consumes (formats.md §1.1, §2.1).

Offsets (the same for Medusa and Hydra): the base ``lm_head`` at position t predicts
token t+1 (the *root* of the draft tree); head i (0-based) at position t predicts
token t+2+i.

Medusa head i (independent of the path):
    x_0 = h_t;  x_{l+1} = x_l + SiLU(W_{i,l} x_l + b_{i,l})  for l < n_layers
    logits_i = LM_i x_L        (LM_i: the head's own [V, H] or the base lm_head)

Hydra head i (grounded: conditioned on the tokens of its path, formats.md §2.1):
    z = concat(h_t, E(x_{t+1}), E(x_{t+2}), ..., E(x_{t+i+1}))     width H * (i + 2)
    y_1 = R_i z + r_i + SiLU(A_i z + a_i)                            [H]
    y_{l+1} = y_l + SiLU(W_{i,l} y_l + b_{i,l})   for the n_layers - 1 plain blocks
    logits_i = LM_i y + c_i    (own [V, H] weight with bias [V]; or the base lm_head)
where x_{t+1} is the root (the base model's own next token), x_{t+2}.. are the
drafted tokens before head i on the path, and E is the base ``embed_tokens``.

Upstream builds repeated blocks by list multiplication, so Medusa with
n_layers > 1 and Hydra's plain blocks share one weight per head. Here every block
owns its weights; loading a shared upstream checkpoint copies the shared tensor into
each slot, which computes exactly the same function.

Files read (the layout is always inferred from tensor names, never from config.json):
  * ours: a directory with ``entmtp_heads.json`` + ``heads.safetensors``;
  * Medusa: ``medusa_lm_head.safetensors`` / ``medusa_lm_head.pt`` (v0.1 with per-head
    lm_heads, or "version 2" without), or a Medusa-2 full checkpoint whose head keys
    carry the ``medusa_head.`` prefix (only those keys are read);
  * Hydra: ``hydra_lm_head.pt`` with ``hydra_head_arch = "mlp"``, grounded heads,
    ``hidden_state_offset = 0``. Other Hydra variants are rejected, see
    ``_reject_unsupported_hydra``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from entmtp.errors import EntmtpError
from entmtp.model.llama import linear

FORMAT_ID = "entmtp-heads/1"
CONFIG_NAME = "entmtp_heads.json"
WEIGHTS_NAME = "heads.safetensors"
KINDS = ("medusa", "hydra")

# How many offending key names an error message lists before "…".
_KEYS_SHOWN = 5


# --------------------------------------------------------------------------- #
# Config
# --------------------------------------------------------------------------- #

@dataclasses.dataclass(frozen=True)
class HeadsConfig:
    """Contents of ``entmtp_heads.json`` (format ``entmtp-heads/1``).

    n_layers counts residual blocks per head; for Hydra that includes the first,
    conditioned block (the same count as upstream ``hydra_num_layers``).
    base_model / training are free-form provenance, stored and returned as given.
    """

    kind: str
    n_heads: int
    n_layers: int
    hidden_size: int
    vocab_size: int
    shared_lm_head: bool
    base_model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    training: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EntmtpError(f"heads kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for name in ("n_heads", "n_layers", "hidden_size", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EntmtpError(f"heads {name} must be a positive integer, not {value!r}")
        if not isinstance(self.shared_lm_head, bool):
            raise EntmtpError(f"heads shared_lm_head must be true or false, not {self.shared_lm_head!r}")
        for name in ("base_model", "training"):
            if not isinstance(getattr(self, name), Mapping):
                raise EntmtpError(f"heads {name} must be a JSON object")

    @classmethod
    def from_json(cls, raw: Any, source: str) -> "HeadsConfig":
        if not isinstance(raw, dict):
            raise EntmtpError(f"{source}: expected a JSON object")
        fields = [f.name for f in dataclasses.fields(cls)]
        allowed = set(fields) | {"format"}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise EntmtpError(f"{source}: unknown keys: {_first_few(unknown)}")
        if raw.get("format") != FORMAT_ID:
            raise EntmtpError(f"{source}: format must be {FORMAT_ID!r}, not {raw.get('format')!r}")
        missing = [k for k in fields if k not in raw]
        if missing:
            raise EntmtpError(f"{source}: missing keys: {', '.join(missing)}")
        try:
            return cls(**{k: raw[k] for k in fields})
        except EntmtpError as exc:
            raise EntmtpError(f"{source}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_ID, "kind": self.kind, "n_heads": self.n_heads,
            "n_layers": self.n_layers, "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size, "shared_lm_head": self.shared_lm_head,
            "base_model": dict(self.base_model), "training": dict(self.training),
        }


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #

def _as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` in the dtype/device of `like`; a no-op (no copy) when they already match."""
    return t.to(device=like.device, dtype=like.dtype)


def _topk_probs(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V] (any float dtype) -> (ids int64 [R, k], probs fp32 [R, k]), rank order."""
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must be in [1, {logits.shape[-1]}], got {top_k}")
    # Softmax in fp32: bf16 probabilities are too coarse to rank or calibrate on.
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, top_k, dim=-1)
    return top.indices, top.values


def _check_hidden(hidden: torch.Tensor, hidden_size: int, what: str) -> None:
    if hidden.shape[-1] != hidden_size:
        raise ValueError(f"{what} must end in hidden size {hidden_size}, got {tuple(hidden.shape)}")


def _init_bias_(bias: torch.Tensor, fan_in: int) -> None:
    # nn.Linear's default bias init; upstream zero-inits only the weight.
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        bias.uniform_(-bound, bound)


def _lm_head_param(n_heads: int, shared: bool, vocab: int, hidden: int,
                   dtype: torch.dtype) -> Optional[nn.Parameter]:
    """Per-head vocab projections [n_heads, V, H], or None when the base lm_head is reused."""
    if shared:
        return None
    return nn.Parameter(torch.zeros(n_heads, vocab, hidden, dtype=dtype))


# --------------------------------------------------------------------------- #
# Medusa
# --------------------------------------------------------------------------- #

class _DraftHeads(nn.Module):
    """Sizes and provenance common to Medusa and Hydra heads."""

    kind: str

    def __init__(self, n_heads: int, n_layers: int, hidden_size: int, vocab_size: int,
                 shared_lm_head: bool):
        super().__init__()
        self.n_heads, self.n_layers = n_heads, n_layers
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.shared_lm_head = shared_lm_head
        # {"base_model": {...}, "training": {...}}: written by save_heads, set by load_heads.
        self.metadata: dict[str, Any] = {"base_model": {}, "training": {}}

    def init_lm_heads_from(self, base_lm_head: torch.Tensor) -> None:
        """Copy the base lm_head [V, H] into every per-head projection (the upstream
        Medusa v0.1 and Hydra init); no-op with shared_lm_head."""
        if self.lm_head is not None:
            with torch.no_grad():
                self.lm_head.copy_(base_lm_head.unsqueeze(0).expand_as(self.lm_head))

    def _one_row(self, hidden_last: torch.Tensor) -> torch.Tensor:
        """[H] or [1, H] -> [1, H]."""
        if hidden_last.numel() != self.hidden_size:
            raise ValueError(f"hidden_last must be [H] or [1, H] with H={self.hidden_size}, "
                             f"got {tuple(hidden_last.shape)}")
        return hidden_last.reshape(1, self.hidden_size)


class MedusaHeads(_DraftHeads):
    """Medusa heads; head i at position t predicts token t+2+i.

    Parameters (all heads stacked so a decode step is a few batched matmuls):
      block_weight [n_heads, n_layers, H, H], block_bias [n_heads, n_layers, H];
      lm_head [n_heads, V, H], or None with shared_lm_head (Medusa "version 2").
    """

    kind = "medusa"

    def __init__(self, n_heads: int, n_layers: int, hidden_size: int, vocab_size: int,
                 shared_lm_head: bool, dtype: torch.dtype = torch.float32):
        super().__init__(n_heads, n_layers, hidden_size, vocab_size, shared_lm_head)
        H = hidden_size
        # Upstream init: zero block weights (each block starts as the identity).
        self.block_weight = nn.Parameter(torch.zeros(n_heads, n_layers, H, H, dtype=dtype))
        self.block_bias = nn.Parameter(torch.zeros(n_heads, n_layers, H, dtype=dtype))
        _init_bias_(self.block_bias, H)
        self.lm_head = _lm_head_param(n_heads, shared_lm_head, vocab_size, H, dtype)

    def forward(self, hidden: torch.Tensor, base_lm_head: Optional[torch.Tensor]) -> torch.Tensor:
        """hidden [N, H] (post final norm) -> logits [n_heads, N, V], in hidden's dtype.

        base_lm_head [V, H] is used only with shared_lm_head (may be None otherwise).
        """
        _check_hidden(hidden, self.hidden_size, "hidden")
        x = hidden.reshape(1, -1, self.hidden_size).expand(self.n_heads, -1, -1)  # [n, N, H]
        w, b = _as(self.block_weight, hidden), _as(self.block_bias, hidden)
        for layer in range(self.n_layers):
            # [n, N, H] @ [n, H, H] + [n, 1, H]: all heads' block `layer` in one bmm.
            x = x + F.silu(torch.baddbmm(b[:, layer].unsqueeze(1), x, w[:, layer].transpose(1, 2)))
        if self.lm_head is not None:
            lm_heads = _as(self.lm_head, hidden)
            return torch.stack([linear(x[i], lm_heads[i]) for i in range(self.n_heads)])  # [n, N, V]
        if base_lm_head is None:
            raise ValueError("these Medusa heads reuse the base lm_head; pass base_lm_head [V, H]")
        # One [n*N, H] @ [H, V] matmul for all heads.
        n, N, H = x.shape
        return linear(x.reshape(n * N, H), _as(base_lm_head, hidden)).view(n, N, -1)

    def propose(self, hidden_last: torch.Tensor, base_lm_head: Optional[torch.Tensor],
                top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_last [H] or [1, H] -> (ids int64 [n_heads, top_k], probs fp32 [n_heads, top_k]).

        probs are each head's softmax probabilities (over the full vocabulary) of its
        top-k tokens, in rank order; row i drafts the token at offset +2+i.
        """
        logits = self.forward(self._one_row(hidden_last), base_lm_head)[:, 0]  # [n, V]
        return _topk_probs(logits, top_k)


# --------------------------------------------------------------------------- #
# Hydra
# --------------------------------------------------------------------------- #

class HydraHeads(_DraftHeads):
    """Grounded Hydra heads (``hydra_head_arch = "mlp"``); head i at position t predicts t+2+i.

    Parameters:
      cond_weight[i], res_weight[i] [H, H*(i+2)], cond_bias, res_bias [n_heads, H]:
        the first, conditioned block of each head (upstream ``linear`` / ``res_connection``);
      block_weight [n_heads, n_layers-1, H, H], block_bias [n_heads, n_layers-1, H]:
        the plain residual blocks after it;
      lm_head [n_heads, V, H] + lm_head_bias [n_heads, V], or both None with
        shared_lm_head (then the base lm_head, which has no bias, is used).
    """

    kind = "hydra"

    def __init__(self, n_heads: int, n_layers: int, hidden_size: int, vocab_size: int,
                 shared_lm_head: bool, dtype: torch.dtype = torch.float32):
        super().__init__(n_heads, n_layers, hidden_size, vocab_size, shared_lm_head)
        H = hidden_size
        widths = [H * (i + 2) for i in range(n_heads)]
        self.cond_weight = nn.ParameterList(
            [nn.Parameter(torch.zeros(H, w, dtype=dtype)) for w in widths])
        self.res_weight = nn.ParameterList(
            [nn.Parameter(torch.empty(H, w, dtype=dtype)) for w in widths])
        self.cond_bias = nn.Parameter(torch.empty(n_heads, H, dtype=dtype))
        self.res_bias = nn.Parameter(torch.empty(n_heads, H, dtype=dtype))
        self.block_weight = nn.Parameter(torch.zeros(n_heads, n_layers - 1, H, H, dtype=dtype))
        self.block_bias = nn.Parameter(torch.empty(n_heads, n_layers - 1, H, dtype=dtype))
        # nn.Linear defaults for everything but the zero-initialised `linear` weights.
        for i, w in enumerate(widths):
            nn.init.kaiming_uniform_(self.res_weight[i], a=math.sqrt(5))
            _init_bias_(self.cond_bias[i], w)
            _init_bias_(self.res_bias[i], w)
        _init_bias_(self.block_bias, H)
        self.lm_head = _lm_head_param(n_heads, shared_lm_head, vocab_size, H, dtype)
        self.lm_head_bias = None if shared_lm_head else nn.Parameter(
            torch.zeros(n_heads, vocab_size, dtype=dtype))
        if self.lm_head_bias is not None:
            _init_bias_(self.lm_head_bias, H)

    def forward_paths(self, hidden: torch.Tensor, path_embeds: torch.Tensor, head_index: int,
                      base_lm_head: Optional[torch.Tensor]) -> torch.Tensor:
        """Head `head_index` on P paths -> logits [P, V] in hidden's dtype.

        hidden: [P, H], or [H] / [1, H] shared by all paths: the base hidden state
          (post final norm) at the position t the tree grows from.
        path_embeds: [P, d, H] with d = head_index + 1: base input embeddings of the
          path's tokens in order: [:, 0] = the root x_{t+1} (the base model's next
          token), [:, j] = the drafted token x_{t+1+j}. The head predicts x_{t+2+head_index}.
        The head input is concat(hidden, path_embeds[:, 0], ..., path_embeds[:, d-1])
        (width H*(d+1)), Hydra's order.
        """
        if not 0 <= head_index < self.n_heads:
            raise ValueError(f"head_index must be in [0, {self.n_heads}), got {head_index}")
        H, d = self.hidden_size, head_index + 1
        if path_embeds.dim() != 3 or path_embeds.shape[1:] != (d, H):
            raise ValueError(f"path_embeds for head {head_index} must be [P, {d}, {H}], "
                             f"got {tuple(path_embeds.shape)}")
        _check_hidden(hidden, H, "hidden")
        P = path_embeds.shape[0]
        if hidden.numel() not in (H, P * H):
            raise ValueError(f"hidden must be [H], [1, H] or [{P}, H] for {P} paths, "
                             f"got {tuple(hidden.shape)}")
        z = torch.cat([hidden.reshape(-1, H).expand(P, H),
                       path_embeds.to(hidden.dtype).reshape(P, d * H)], dim=-1)  # [P, H(d+1)]
        i = head_index
        y = (linear(z, _as(self.res_weight[i], hidden), _as(self.res_bias[i], hidden))
             + F.silu(linear(z, _as(self.cond_weight[i], hidden), _as(self.cond_bias[i], hidden))))
        w, b = _as(self.block_weight[i], hidden), _as(self.block_bias[i], hidden)
        for layer in range(self.n_layers - 1):
            y = y + F.silu(linear(y, w[layer], b[layer]))  # [P, H]
        if self.lm_head is not None:
            return linear(y, _as(self.lm_head[i], hidden), _as(self.lm_head_bias[i], hidden))
        if base_lm_head is None:
            raise ValueError("these Hydra heads reuse the base lm_head; pass base_lm_head [V, H]")
        return linear(y, _as(base_lm_head, hidden))

    def propose_level(self, hidden_last: torch.Tensor, path_token_ids: torch.Tensor,
                      embed_weight: torch.Tensor, base_lm_head: Optional[torch.Tensor],
                      top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One level of a grounded tree proposal.

        hidden_last [H] or [1, H]; path_token_ids int64 [P, d]: the P frontier paths,
        each root first (so head d-1 runs); embed_weight [V, H]: base embed_tokens.
        Returns (ids int64 [P, top_k], probs fp32 [P, top_k]): each path's children.
        """
        if path_token_ids.dim() != 2:
            raise ValueError(f"path_token_ids must be [P, d], got {tuple(path_token_ids.shape)}")
        embeds = F.embedding(path_token_ids, embed_weight)  # [P, d, H]
        logits = self.forward_paths(self._one_row(hidden_last), embeds,
                                    path_token_ids.shape[1] - 1, base_lm_head)
        return _topk_probs(logits, top_k)


Heads = Union[MedusaHeads, HydraHeads]
_CLASSES = {"medusa": MedusaHeads, "hydra": HydraHeads}


def heads_config(heads: Heads, metadata: Optional[Mapping[str, Any]] = None) -> HeadsConfig:
    """The HeadsConfig describing `heads`; provenance from `metadata` or heads.metadata."""
    meta = dict(heads.metadata if metadata is None else metadata)
    unknown = sorted(set(meta) - {"base_model", "training"})
    if unknown:
        raise EntmtpError(f"heads metadata has unknown keys: {_first_few(unknown)} "
                          "(allowed: base_model, training)")
    return HeadsConfig(kind=heads.kind, n_heads=heads.n_heads, n_layers=heads.n_layers,
                       hidden_size=heads.hidden_size, vocab_size=heads.vocab_size,
                       shared_lm_head=heads.shared_lm_head,
                       base_model=dict(meta.get("base_model", {})),
                       training=dict(meta.get("training", {})))


# --------------------------------------------------------------------------- #
# Saving
# --------------------------------------------------------------------------- #

def save_heads(heads: Heads, directory: Union[str, Path],
               metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write `heads` as ``entmtp_heads.json`` + ``heads.safetensors`` under `directory`.

    metadata: {"base_model": {...}, "training": {...}} provenance (other keys raise);
    None stores heads.metadata. Returns the directory.
    """
    from safetensors.torch import save_file

    config = heads_config(heads, metadata)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # Contiguous, unshared copies: safetensors refuses tensors that share storage.
    tensors = {k: v.detach().contiguous().clone() for k, v in heads.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": FORMAT_ID})
    (out / CONFIG_NAME).write_text(json.dumps(config.to_json(), indent=2) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #

def _first_few(names: list[str]) -> str:
    shown = ", ".join(names[:_KEYS_SHOWN])
    return shown + (f", … ({len(names)} in all)" if len(names) > _KEYS_SHOWN else "")


def _all_names(names: list[str]) -> list[str]:
    return names


def _medusa2_names(names: list[str]) -> list[str]:
    """In a Medusa-2 full checkpoint only the `medusa_head.` keys are heads; else keep all."""
    heads = [k for k in names if k.startswith(_MEDUSA_PREFIX)]
    return heads if heads else names


def _read_tensors(path: Path, select=_all_names) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch-pickle file named by select(all names).

    Any failure to parse is the user's file being wrong, so it becomes one EntmtpError.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                # Only the selected tensors are read (a full checkpoint's base weights are not).
                return {k: f.get_tensor(k) for k in select(list(f.keys()))}
        # weights_only: never run pickled code from a downloaded file. mmap keeps
        # Medusa-2 shards (base weights + heads) from being read in full.
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) pickles cannot be mmapped
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EntmtpError(f"heads file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - parsers raise many types for bad bytes
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EntmtpError(f"cannot read heads file {path}: {reason}") from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise EntmtpError(f"heads file {path} does not hold a state_dict of named tensors")
    return {k: state[k] for k in select(list(state))}


def _check_tensors(source: Path, tensors: Mapping[str, torch.Tensor],
                   expected: Mapping[str, tuple[int, ...]]) -> None:
    """Exact key set and shapes, reported as one-line errors naming the file."""
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise EntmtpError(f"heads file {source} has unexpected keys: {_first_few(unexpected)}")
    missing = sorted(set(expected) - set(tensors), key=_natural_key)
    if missing:
        raise EntmtpError(f"heads file {source} is missing keys: {_first_few(missing)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise EntmtpError(f"heads file {source}: {name} has shape {list(tensors[name].shape)}, "
                              f"expected {list(shape)}")


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _check_sizes(source: Path, hidden: Optional[int], vocab: Optional[int], hidden_size: int,
                 vocab_size: int) -> None:
    """None: that tensor is absent; _check_tensors then reports it as a missing key."""
    if hidden is not None and hidden != hidden_size:
        raise EntmtpError(f"heads expect hidden size {hidden} but the model has {hidden_size} ({source})")
    if vocab is not None and vocab != vocab_size:
        raise EntmtpError(f"heads expect vocab size {vocab} but the model has {vocab_size} ({source})")


def _pick_dtype(tensors: Mapping[str, torch.Tensor], dtype: Optional[torch.dtype]) -> torch.dtype:
    if dtype is not None:
        return dtype
    return next(iter(tensors.values())).dtype


# ---- ours ------------------------------------------------------------------ #

def _load_ours(folder: Path, hidden_size: int, vocab_size: int,
               dtype: Optional[torch.dtype]) -> Heads:
    config_path = folder / CONFIG_NAME
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EntmtpError(f"cannot read {config_path}: {exc}") from None
    config = HeadsConfig.from_json(raw, str(config_path))
    _check_sizes(config_path, config.hidden_size, config.vocab_size, hidden_size, vocab_size)
    weights = folder / WEIGHTS_NAME
    tensors = _read_tensors(weights)
    if not tensors:
        raise EntmtpError(f"heads file {weights} holds no tensors")
    heads = _CLASSES[config.kind](config.n_heads, config.n_layers, config.hidden_size,
                                  config.vocab_size, config.shared_lm_head,
                                  dtype=_pick_dtype(tensors, dtype))
    expected = {k: tuple(v.shape) for k, v in heads.state_dict().items()}
    _check_tensors(weights, tensors, expected)
    heads.load_state_dict(tensors)
    heads.metadata = {"base_model": dict(config.base_model), "training": dict(config.training)}
    return heads


# ---- Medusa ---------------------------------------------------------------- #

_MEDUSA_PREFIX = "medusa_head."
_MEDUSA_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")


def _medusa_from_tensors(source: Path, tensors: dict[str, torch.Tensor], hidden_size: int,
                         vocab_size: int, dtype: Optional[torch.dtype]) -> MedusaHeads:
    """Medusa head state_dict (keys `{i}.{l}.linear.*`, `{i}.{L}.weight`, prefix stripped).

    Heads = 1 + largest head index; layers = distinct l with `0.{l}.linear.weight`;
    per-head lm_heads iff `{i}.{L}.weight` exists (formats.md §1.2).
    """
    parsed = [m for m in map(_MEDUSA_KEY.match, tensors) if m]
    if not parsed:
        raise EntmtpError(f"heads file {source} holds no Medusa head keys "
                          f"(`{{head}}.{{layer}}.linear.weight`)")
    n_heads = 1 + max(int(m.group(1)) for m in parsed)
    n_layers = len({m.group(2) for m in parsed if m.group(1) == "0" and m.group(3) == "linear.weight"})
    if n_layers == 0:
        raise EntmtpError(f"heads file {source} is missing keys: 0.0.linear.weight")
    own_lm = f"0.{n_layers}.weight" in tensors
    hidden = tensors["0.0.linear.weight"].shape[0] if "0.0.linear.weight" in tensors else None
    vocab = tensors[f"0.{n_layers}.weight"].shape[0] if own_lm else None
    _check_sizes(source, hidden, vocab, hidden_size, vocab_size)
    H = hidden_size
    expected: dict[str, tuple[int, ...]] = {}
    for i in range(n_heads):
        for layer in range(n_layers):
            expected[f"{i}.{layer}.linear.weight"] = (H, H)
            expected[f"{i}.{layer}.linear.bias"] = (H,)
        if own_lm:
            expected[f"{i}.{n_layers}.weight"] = (vocab_size, H)
    _check_tensors(source, tensors, expected)

    heads = MedusaHeads(n_heads, n_layers, H, vocab_size, shared_lm_head=not own_lm,
                        dtype=_pick_dtype(tensors, dtype))
    with torch.no_grad():
        for i in range(n_heads):
            for layer in range(n_layers):
                heads.block_weight[i, layer].copy_(tensors[f"{i}.{layer}.linear.weight"])
                heads.block_bias[i, layer].copy_(tensors[f"{i}.{layer}.linear.bias"])
            if own_lm:
                heads.lm_head[i].copy_(tensors[f"{i}.{n_layers}.weight"])
    return heads


def _medusa2_files(folder: Path) -> list[Path]:
    """Weight files of a full (base + heads) checkpoint that hold `medusa_head.` keys."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                shards = sorted({f for k, f in weight_map.items() if k.startswith(_MEDUSA_PREFIX)})
            except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise EntmtpError(f"{index}: not a valid shard index ({exc})") from None
            if not shards:
                raise EntmtpError(f"{index} lists no {_MEDUSA_PREFIX}* keys: not a Medusa-2 checkpoint")
            return [folder / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    return []


def _medusa2_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """Only the `medusa_head.` keys of a full checkpoint, prefix stripped."""
    heads: dict[str, torch.Tensor] = {}
    for path in files:
        for k, v in _read_tensors(path, _medusa2_names).items():
            if k.startswith(_MEDUSA_PREFIX):
                heads[k[len(_MEDUSA_PREFIX):]] = v
    return heads


# ---- Hydra ----------------------------------------------------------------- #

_HYDRA_MLP = re.compile(r"^hydra_mlp\.(\d+)\.(\d+)\.(linear|res_connection)\.(weight|bias)$")
_HYDRA_LM = re.compile(r"^hydra_lm_head\.(\d+)\.")


def _read_hydra_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EntmtpError(f"cannot read {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise EntmtpError(f"{path}: expected a JSON object")
    return raw


def _reject_unsupported_hydra(source: Path, tensors: Mapping[str, torch.Tensor],
                              config: Mapping[str, Any]) -> None:
    """Only grounded `mlp` heads reading the last hidden state are supported.

    * prefix-mlp (Hydra++): the heads read the output of an extra Llama decoder layer
      run over the base hidden states with its own KV cache, not h_t; running the heads
      without that layer would be wrong, and entmtp does not run the layer.
    * hidden_state_offset k > 0: the heads read hidden_states[-(k+1)], an earlier
      layer's output, which the base model does not hand to the heads.
    * grounded_heads = false: not path-conditioned (Medusa-like with biased lm_heads).
    * cross-attn / eagle-attn: different modules altogether.
    """
    arch = config.get("hydra_head_arch", "mlp")
    if arch == "prefix-mlp" or any(k.startswith("prefix_embeding_layer.") for k in tensors):
        raise EntmtpError(
            f"Hydra heads at {source} use hydra_head_arch 'prefix-mlp' (Hydra++): they need an "
            "extra decoder layer with its own KV cache over the base hidden states, which "
            "entmtp does not support; use grounded 'mlp' Hydra heads or Medusa heads")
    if arch != "mlp":
        raise EntmtpError(f"Hydra heads at {source} use hydra_head_arch {arch!r}; "
                          "entmtp supports only grounded 'mlp' Hydra heads")
    offset = config.get("hidden_state_offset", 0)
    if offset != 0:
        raise EntmtpError(
            f"Hydra heads at {source} read hidden_state_offset={offset!r} (an earlier layer's "
            "hidden state); entmtp supports only 0, the final normed hidden state")
    grounded = config.get("grounded_heads", True)
    if grounded is not True or (tensors and "hydra_mlp.0.0.res_connection.weight" not in tensors):
        raise EntmtpError(f"Hydra heads at {source} are not grounded (grounded_heads=false); "
                          "entmtp supports only grounded Hydra heads")


def _hydra_from_tensors(source: Path, tensors: dict[str, torch.Tensor], config: Mapping[str, Any],
                        hidden_size: int, vocab_size: int,
                        dtype: Optional[torch.dtype]) -> HydraHeads:
    """Hydra `mlp` state_dict (formats.md §2.2):
    hydra_mlp.{i}.0.{linear,res_connection}.{weight [H, H(i+2)], bias [H]},
    hydra_mlp.{i}.{j}.linear.{weight [H, H], bias} for 1 <= j < L (one shared block upstream),
    hydra_lm_head.{i}.{weight [V, H], bias [V]}.
    Heads = distinct i under hydra_lm_head; layers = distinct j under hydra_mlp.0.
    """
    _reject_unsupported_hydra(source, tensors, config)
    n_heads = len({m.group(1) for m in map(_HYDRA_LM.match, tensors) if m})
    n_layers = len({m.group(2) for m in map(_HYDRA_MLP.match, tensors) if m and m.group(1) == "0"})
    if n_heads == 0 or n_layers == 0:
        raise EntmtpError(f"heads file {source} holds no Hydra head keys "
                          "(hydra_mlp.{i}.{j}.*, hydra_lm_head.{i}.*)")
    hidden = tensors["hydra_mlp.0.0.linear.weight"].shape[0] \
        if "hydra_mlp.0.0.linear.weight" in tensors else None
    vocab = tensors["hydra_lm_head.0.weight"].shape[0] if "hydra_lm_head.0.weight" in tensors else None
    _check_sizes(source, hidden, vocab, hidden_size, vocab_size)
    H, V = hidden_size, vocab_size
    expected: dict[str, tuple[int, ...]] = {}
    for i in range(n_heads):
        for part in ("linear", "res_connection"):
            expected[f"hydra_mlp.{i}.0.{part}.weight"] = (H, H * (i + 2))
            expected[f"hydra_mlp.{i}.0.{part}.bias"] = (H,)
        for j in range(1, n_layers):
            expected[f"hydra_mlp.{i}.{j}.linear.weight"] = (H, H)
            expected[f"hydra_mlp.{i}.{j}.linear.bias"] = (H,)
        expected[f"hydra_lm_head.{i}.weight"] = (V, H)
        expected[f"hydra_lm_head.{i}.bias"] = (V,)
    _check_tensors(source, tensors, expected)

    heads = HydraHeads(n_heads, n_layers, H, V, shared_lm_head=False,
                       dtype=_pick_dtype(tensors, dtype))
    with torch.no_grad():
        for i in range(n_heads):
            heads.cond_weight[i].copy_(tensors[f"hydra_mlp.{i}.0.linear.weight"])
            heads.cond_bias[i].copy_(tensors[f"hydra_mlp.{i}.0.linear.bias"])
            heads.res_weight[i].copy_(tensors[f"hydra_mlp.{i}.0.res_connection.weight"])
            heads.res_bias[i].copy_(tensors[f"hydra_mlp.{i}.0.res_connection.bias"])
            for j in range(1, n_layers):
                heads.block_weight[i, j - 1].copy_(tensors[f"hydra_mlp.{i}.{j}.linear.weight"])
                heads.block_bias[i, j - 1].copy_(tensors[f"hydra_mlp.{i}.{j}.linear.bias"])
            heads.lm_head[i].copy_(tensors[f"hydra_lm_head.{i}.weight"])
            heads.lm_head_bias[i].copy_(tensors[f"hydra_lm_head.{i}.bias"])
    return heads


def _is_hydra(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("hydra_mlp.", "hydra_lm_head.", "prefix_embeding_layer.")) for k in tensors)


# ---- dispatch -------------------------------------------------------------- #

_FILE_CANDIDATES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt",
                    "hydra_lm_head.safetensors", "hydra_lm_head.pt")


def load_heads(path: Union[str, Path], *, hidden_size: int, vocab_size: int,
               kind: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> Heads:
    """Load draft heads and check them against the base model's hidden and vocab sizes.

    path: our directory (entmtp_heads.json), a Medusa/Hydra directory
      (medusa_lm_head.{safetensors,pt}, hydra_lm_head.pt, or a Medusa-2 full checkpoint
      with model.safetensors / shards / pytorch_model.bin), or one such file.
    kind: "medusa" / "hydra" to insist on one; None accepts either.
    dtype: parameter dtype; None keeps the file's.
    Every user-caused problem raises EntmtpError with a one-line message.
    """
    if kind is not None and kind not in KINDS:
        raise EntmtpError(f"heads kind must be one of {', '.join(KINDS)}, not {kind!r}")
    source = Path(path)
    if source.is_dir():
        heads = _load_dir(source, hidden_size, vocab_size, dtype)
    elif source.is_file():
        heads = _load_file(source, source.parent, hidden_size, vocab_size, dtype)
    else:
        raise EntmtpError(f"heads path {source} does not exist")
    if kind is not None and heads.kind != kind:
        raise EntmtpError(f"heads at {source} are {heads.kind} heads, not {kind}")
    return heads


def _load_dir(folder: Path, hidden_size: int, vocab_size: int,
              dtype: Optional[torch.dtype]) -> Heads:
    if (folder / CONFIG_NAME).is_file():
        return _load_ours(folder, hidden_size, vocab_size, dtype)
    for name in _FILE_CANDIDATES:
        if (folder / name).is_file():
            return _load_file(folder / name, folder, hidden_size, vocab_size, dtype)
    files = _medusa2_files(folder)
    if files:
        tensors = _medusa2_tensors(files)
        if not tensors:
            raise EntmtpError(f"model folder {folder} has no {_MEDUSA_PREFIX}* keys: not a Medusa-2 checkpoint")
        return _medusa_from_tensors(files[0], tensors, hidden_size, vocab_size, dtype)
    raise EntmtpError(
        f"no draft heads in {folder}: expected {CONFIG_NAME}, {', '.join(_FILE_CANDIDATES)}, "
        "or a Medusa-2 checkpoint (model.safetensors with medusa_head.* keys)")


def _load_file(path: Path, folder: Path, hidden_size: int, vocab_size: int,
               dtype: Optional[torch.dtype]) -> Heads:
    if path.suffix not in (".safetensors", ".pt", ".bin", ".pth"):
        raise EntmtpError(f"heads file {path}: expected a .safetensors, .pt or .bin file")
    tensors = _read_tensors(path, _medusa2_names)
    if not tensors:
        raise EntmtpError(f"heads file {path} holds no tensors")
    if _is_hydra(tensors):
        return _hydra_from_tensors(path, tensors, _read_hydra_config(folder),
                                   hidden_size, vocab_size, dtype)
    if any(k.startswith(_MEDUSA_PREFIX) for k in tensors):
        # A Medusa-2 full checkpoint file: read the head keys only.
        tensors = {k[len(_MEDUSA_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MEDUSA_PREFIX)}
    return _medusa_from_tensors(path, tensors, hidden_size, vocab_size, dtype)
