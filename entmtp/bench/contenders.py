"""What the bench races: our decoders and the peers, behind one small interface.

A contender turns prompt token ids into a `Run`: the generated ids (EOS
included, as our decoders emit it), wall seconds, prefill seconds, the number
of model forwards (steps; the prefill is step 1) and per-step records.
Peers are measured only when their package is installed; otherwise
`make_contender` raises `PeerMissing` and the bench prints a one-line notice.
"""
from __future__ import annotations

import dataclasses
import time

import torch

from entmtp.decode.types import GenerationResult, StepRecord
from entmtp.defaults import HEAD_KINDS
from entmtp.errors import UsageError
from entmtp.model.loader import LoadedModel
from entmtp.schedule.spec import SchedulerSpec

OUR_METHODS = ("ar",) + HEAD_KINDS
# Tree-bank methods (entmtp.schedule.bank): the task's shipped bank for the heads after
# "@" (hydra by default), switched by a scheduler: `entmtp` (the bank's recommended one)
# or a scheduler spec in its method form (entmtp.schedule.spec: rate-accept, entropy, ...).
BANK_METHODS = ("entmtp", "entropy", "rate", "rate-entropy", "rate-accept", "rate-confidence", "rate-probe",
                "rate-all", "rate-now", "static-best", "oracle")


def bank_method_spec(base: str) -> SchedulerSpec | None:
    """The scheduler a bank method names; None for `entmtp` (the bank's recommendation)."""
    return None if base == "entmtp" else SchedulerSpec.parse(base)
PEERS = ("transformers", "transformers-pld", "llama-cpp")
PLD_NGRAM_TOKENS = 10   # transformers' prompt_lookup_num_tokens


class PeerMissing(Exception):
    """A peer that cannot run here; the message says why, in one line."""


@dataclasses.dataclass
class Run:
    token_ids: list[int]
    seconds: float
    prefill_seconds: float | None
    steps: int | None
    records: list[StepRecord] = dataclasses.field(default_factory=list)

    @classmethod
    def from_result(cls, result: GenerationResult) -> Run:
        return cls(result.token_ids, result.seconds, result.prefill_seconds, result.steps, result.records)


DRAFT_VOCAB_SUFFIX = "+dv"  # hydra@tree8+dv: draft over the vocabulary shortlist stored with the heads


def split_draft_vocab(spec: str) -> tuple[str, bool]:
    """'hydra@tree8+dv' -> ('hydra@tree8', True)."""
    if spec.endswith(DRAFT_VOCAB_SUFFIX):
        return spec[:-len(DRAFT_VOCAB_SUFFIX)], True
    return spec, False


def parse_method(spec: str) -> tuple[str, str | None]:
    """'hydra' -> ('hydra', None); 'hydra@tree8' -> ('hydra', 'tree8') (a tree name or JSON path);
    a '+dv' suffix (draft vocabulary) is allowed on our speculative methods."""
    spec, draft_vocab = split_draft_vocab(spec)
    base, _, tree = spec.partition("@")
    if draft_vocab and base not in HEAD_KINDS and base not in BANK_METHODS:
        raise UsageError(f"method {spec + DRAFT_VOCAB_SUFFIX!r}: +dv goes with {', '.join(HEAD_KINDS)} "
                         "and the bank methods")
    if base in PEERS and not tree:
        return base, None
    if base in BANK_METHODS:
        if tree and tree not in HEAD_KINDS:
            raise UsageError(f"method {spec!r}: after '@' a bank method takes {', '.join(HEAD_KINDS)}, "
                             f"not {tree!r}")
        return base, tree or "hydra"
    if base not in OUR_METHODS or (base == "ar" and tree):
        names = ", ".join(OUR_METHODS + tuple(BANK_METHODS) + PEERS)
        raise UsageError(f"unknown method {spec!r}; available: {names} (and medusa@TREE, hydra@TREE, "
                         "BANKMETHOD@medusa)")
    return base, tree or None


class OurContender:
    def __init__(self, name: str, loaded: LoadedModel, heads: str | None = None):
        from entmtp.decode.methods import MethodOptions, make_decoder

        base, tree = parse_method(name)
        self.name = name
        self.eos = loaded.eos_token_ids
        vocab = "heads" if split_draft_vocab(name)[1] else None
        self.decoder = make_decoder(base, loaded, MethodOptions(heads=heads, tree=tree, draft_vocab=vocab))

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Run:
        return Run.from_result(self.decoder.generate(prompt_ids, max_new_tokens, self.eos))


class BankContender(OurContender):
    """A scheduler over the current task's shipped bank; decoders are built per
    task (each bank's buffers once) and share one copy of the heads."""

    def __init__(self, name: str, loaded: LoadedModel, heads: str | None = None,
                 banks: dict[str, str] | None = None, cost_curve: str | None = None):
        from entmtp.heads.shipped import load_model_heads

        base, kind = parse_method(name)
        self.name = name
        self.eos = loaded.eos_token_ids
        self.loaded = loaded
        self.draft_vocab = "heads" if split_draft_vocab(name)[1] else None
        self.kind = kind
        spec = bank_method_spec(base)
        self.scheduler, self.signal = (spec.scheduler, spec.signal) if spec else (None, None)
        self.heads_path = heads
        self.banks = banks or {}
        self.cost_curve = cost_curve
        self.heads = load_model_heads(loaded, kind, heads)
        self._decoders: dict[str, object] = {}
        self.decoder = None

    def set_task(self, task: str) -> None:
        from entmtp.decode.methods import MethodOptions, make_bank_decoder

        if task not in self._decoders:
            options = MethodOptions(heads=self.heads_path, bank=self.banks.get(task), scheduler=self.scheduler,
                                    signal=self.signal, head_kind=self.kind, task=task, cost_curve=self.cost_curve,
                                    draft_vocab=self.draft_vocab)
            self._decoders[task] = make_bank_decoder(self.loaded, options, heads=self.heads)
        self.decoder = self._decoders[task]


class TransformersContender:
    """transformers' own greedy `generate`, optionally with prompt-lookup decoding,
    on the same converted folder and dtype. A forward hook counts model calls
    (steps) and stamps the end of the first one (prefill)."""

    def __init__(self, name: str, loaded: LoadedModel, dtype: torch.dtype, device: torch.device):
        try:
            from transformers import AutoModelForCausalLM
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise PeerMissing("transformers is not installed (pip install 'transformers>=5,<6')") from None
        hf_logging.disable_progress_bar()
        self.name = name
        self.model = AutoModelForCausalLM.from_pretrained(loaded.folder, dtype=dtype).to(device).eval()
        self.device = device
        self.eos = list(loaded.eos_token_ids)
        self.extra = {"prompt_lookup_num_tokens": PLD_NGRAM_TOKENS} if name == "transformers-pld" else {}
        self._calls: list[float] = []
        self.model.register_forward_hook(lambda *_: self._calls.append(time.perf_counter()))

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Run:
        ids = torch.tensor([prompt_ids], device=self.device)
        self._calls.clear()
        start = time.perf_counter()
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, eos_token_id=self.eos, pad_token_id=self.eos[0],
                                  **self.extra)
        seconds = time.perf_counter() - start
        new = out[0, len(prompt_ids):].tolist()
        prefill = self._calls[0] - start if self._calls else None
        return Run(new, seconds, prefill, len(self._calls) or None)


class LlamaCppContender:
    """llama.cpp through llama-cpp-python on the GGUF the model was converted from
    (for the default model, the Q4_1 file: a different precision, so its tokens
    are not compared for exactness)."""

    def __init__(self, name: str, loaded: LoadedModel, threads: int):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise PeerMissing("llama-cpp-python is not installed (pip install llama-cpp-python)") from None
        from entmtp.model.registry import source_gguf

        gguf = source_gguf(loaded.folder)
        if gguf is None:
            raise PeerMissing(f"model folder {loaded.folder} was not converted from a GGUF file")
        self.name = name
        self.llm = Llama(model_path=str(gguf), n_ctx=loaded.config.max_position_embeddings,
                         n_threads=threads, verbose=False)
        self.eos = set(loaded.eos_token_ids)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> Run:
        out: list[int] = []
        start = time.perf_counter()
        prefill = None
        for token in self.llm.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if prefill is None:
                prefill = time.perf_counter() - start
            out.append(int(token))
            if token in self.eos or len(out) >= max_new_tokens:
                break
        return Run(out, time.perf_counter() - start, prefill, len(out))


def make_contender(name: str, loaded: LoadedModel, dtype: torch.dtype, device: torch.device,
                   heads: dict[str, str] | None = None, cost_curve: str | None = None):
    base, _ = parse_method(name)
    if base in ("transformers", "transformers-pld"):
        return TransformersContender(name, loaded, dtype, device)
    if base == "llama-cpp":
        if device.type != "cpu":
            raise PeerMissing("the llama-cpp peer runs on the CPU only")
        return LlamaCppContender(name, loaded, torch.get_num_threads())
    if base in BANK_METHODS:
        return BankContender(name, loaded, (heads or {}).get(parse_method(name)[1]), cost_curve=cost_curve)
    return OurContender(name, loaded, (heads or {}).get(base))


def is_peer(name: str) -> bool:
    return parse_method(name)[0] in PEERS


def exactness_comparable(name: str) -> bool:
    """llama.cpp runs the quantized GGUF weights, so token identity is not expected."""
    return parse_method(name)[0] != "llama-cpp"

