"""Turn a method name and its options into a decoder for a loaded model."""
from __future__ import annotations

import dataclasses
from typing import Optional

from entmtp.decode.accept import VerifyConfig
from entmtp.decode.autoregressive import ArDecoder
from entmtp.decode.speculative import DEFAULT_TOP_K, SpeculativeDecoder
from entmtp.defaults import DEFAULT_HEAD_KIND, DEFAULT_TASK, DEFAULT_TREE, HEAD_KINDS, METHODS
from entmtp.errors import EntmtpError, UsageError
from entmtp.heads.shipped import heads_fingerprint, load_draft_vocab, load_model_heads
from entmtp.model.loader import LoadedModel, model_fingerprint
from entmtp.schedule.bank import RECOMMENDED, bank_policy, check_bank_provenance
from entmtp.schedule.spec import SchedulerSpec
from entmtp.trees.files import load_tree
from entmtp.tune.loading import bank_document, bank_for_machine


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    heads: Optional[str] = None     # heads file or folder; None = the ones shipped for the model
    tree: Optional[str] = None      # tree name or JSON path; None = DEFAULT_TREE
    typical: bool = False           # typical acceptance (approximate) instead of exact sampling
    temperature: float = 0.0
    top_k: int = DEFAULT_TOP_K
    draft_vocab: Optional[str] = None  # None/"off", "heads" (stored beside the heads) or N (entmtp.heads.shortlist)
    # --method entmtp: a bank (shipped name or JSON path; None = the shipped bank for
    # the model, `head_kind` and `task`), its scheduler and the rate scheduler's signal.
    bank: Optional[str] = None
    scheduler: Optional[str] = None   # None = the bank's recommended one (Bank.recommended)
    signal: Optional[str] = None
    head_kind: str = DEFAULT_HEAD_KIND
    task: str = DEFAULT_TASK
    # A bank source's cost curve: None = this machine's (cached, or measured on first
    # use; entmtp.tune.machine_cost), or an entmtp-cost-curve/1 file.
    cost_curve: Optional[str] = None


def make_decoder(method: str, loaded: LoadedModel, options: MethodOptions = MethodOptions()):
    if method == "ar":
        return ArDecoder(loaded.model)
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if method == "entmtp":
        return make_bank_decoder(loaded, options)
    heads = load_model_heads(loaded, method, options.heads)
    tree = load_tree(options.tree or DEFAULT_TREE)
    verify = _verify_config(options)
    vocab = load_draft_vocab(loaded, method, options.heads, options.draft_vocab)
    return SpeculativeDecoder(loaded.model, heads, tree, verify, top_k=options.top_k,
                              method=_label(method, verify, vocab), draft_vocab=vocab)


def _label(method: str, verify: VerifyConfig, vocab) -> str:
    """hydra, hydra+typical (approximate), hydra+dv8704 (drafting over a draft vocabulary)."""
    return method + ("+typical" if verify.mode == "typical" else "") + (f"+dv{len(vocab.ids)}" if vocab else "")


def _verify_config(options: MethodOptions):
    if options.temperature <= 0:
        return VerifyConfig("greedy")
    return VerifyConfig("typical" if options.typical else "sample", options.temperature)


def make_bank_decoder(loaded: LoadedModel, options: MethodOptions, heads=None):
    """EntMTP: a bank's trees switched per step by one of its schedulers.

    The bank must have been calibrated for this model and these heads (checked
    against its provenance); `heads` may be passed in already loaded."""
    document, where = bank_document(loaded, options.bank, options.head_kind, options.task)
    provenance = document["provenance"]
    kind = provenance.get("heads", {}).get("kind")
    if kind not in HEAD_KINDS:
        raise EntmtpError(f"{where} does not say which heads it was built for")
    if heads is None:
        heads = load_model_heads(loaded, kind, options.heads)
    top_k = provenance["heads"].get("top_k", options.top_k)
    vocab = load_draft_vocab(loaded, kind, options.heads, options.draft_vocab)
    # Checked before a source's cost curve is measured (a minute) for foreign heads.
    check_bank_provenance(_Named(document["name"], provenance), model_fingerprint(loaded), heads_fingerprint(heads),
                          heads.kind)
    bank = bank_for_machine(loaded, heads, document, where, top_k=top_k, draft_vocab=vocab,
                            cost_file=options.cost_curve)
    # Without --scheduler: the bank's recommendation (chosen on its calibration steps);
    # `--scheduler rate` without --signal: the bank's recommended signal.
    # --signal alone means the rate scheduler with that signal, whatever the bank recommends.
    if options.scheduler:
        spec = SchedulerSpec(options.scheduler, options.signal)
    else:
        spec = SchedulerSpec("rate", options.signal) if options.signal else bank.recommended
    spec = spec.with_signal(bank.recommended.signal or RECOMMENDED.signal)
    policy = bank_policy(bank, spec.scheduler, spec.signal or RECOMMENDED.signal, options.tree)
    label = f"entmtp-{spec.method}"
    verify = _verify_config(options)
    decoder = SpeculativeDecoder(loaded.model, heads, policy.trees[0], verify, top_k=top_k,
                                 method=_label(label, verify, vocab), policy=policy,
                                 signal_window=bank.window, draft_vocab=vocab)
    decoder.bank = bank
    return decoder


@dataclasses.dataclass(frozen=True)
class _Named:
    """What check_bank_provenance reads of a bank, from a document not yet loaded."""
    name: str
    provenance: dict
