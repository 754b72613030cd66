"""The bank a decoder runs on this machine: a built bank as it is, or a machine-free
source (entmtp.tune.source) derived on this machine's cost curve
(entmtp.tune.machine_cost: a given file, the cache, or measured now)."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

from entmtp.errors import UsageError
from entmtp.model.loader import LoadedModel
from entmtp.schedule.bank import Bank, bank_from_document, read_bank_document, shipped_bank_document
from entmtp.tune.machine_cost import ENV_FILE, curve_for_bank, read_cost_file
from entmtp.tune.source import check_source, derive_bank, is_source


def read_any_bank(name_or_path: str) -> tuple[Any, str]:
    """Read and check a bank or a source without a model (before the model loads)."""
    return _checked(*read_bank_document(name_or_path))


def _checked(document: Any, where: str) -> tuple[Any, str]:
    if is_source(document):
        check_source(document, where)
    else:
        bank_from_document(document, where)
    return document, where


def check_cost_option(cost_file: Optional[str], document: Any = None) -> None:
    """--cost-curve FILE (or $ENTMTP_COST_CURVE's), checked before the model loads;
    `document`: the --bank given, which must then be a source."""
    if cost_file and document is not None and not is_source(document):
        raise UsageError("--cost-curve goes with a bank source (the shipped banks, or entmtp trees build's "
                         "output); this --bank is already built on its own cost curve")
    if cost_file:
        read_cost_file(cost_file)
    elif os.environ.get(ENV_FILE):
        read_cost_file(os.environ[ENV_FILE], f"${ENV_FILE}")


def bank_document(loaded: LoadedModel, bank: Optional[str], head_kind: str, task: str) -> tuple[Any, str]:
    """(document, where) of `--bank` (a name or file), or of the bank shipped for the
    model, heads kind and task; checked."""
    return _checked(*(read_bank_document(bank) if bank
                      else shipped_bank_document(loaded.folder.name, head_kind, task)))


def bank_for_machine(loaded: LoadedModel, heads, document: Any, where: str, *, top_k: int, draft_vocab=None,
                     cost_file: Optional[str] = None,
                     log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Bank:
    """The Bank a checked document gives here: a built bank as it is; a source derived
    on this machine's curve (or `cost_file`'s)."""
    if not is_source(document):
        if cost_file:
            raise UsageError(f"--cost-curve goes with a bank source (the shipped banks, or entmtp trees build's "
                             f"output); {where} is already built on its own cost curve")
        return bank_from_document(document, where)
    curve, described = curve_for_bank(loaded, heads, document, top_k=top_k, draft_vocab=draft_vocab,
                                      cost_file=cost_file, log=log)
    return derived(document, where, curve, described)


def derived(source: dict, where: str, curve: list, described: dict) -> Bank:
    """A checked source's bank on one curve."""
    return bank_from_document(derive_bank(source, curve, cost=described),
                              f"{where} (derived on the cost curve of {described.get('origin')})")
