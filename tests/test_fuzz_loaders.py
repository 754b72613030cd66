"""Fuzzing the tree and bank loaders (entmtp.trees.files.load_tree, entmtp.schedule.bank.load_bank).

The property: any file or name either loads or raises one EntmtpError whose message is
a single non-empty line, never another exception; and whatever loads can be turned into
what the decoder builds from it (a tree's buffers; a bank's policies and their trees'
buffers) without crashing. About 1,400 generated inputs in all.
"""
from __future__ import annotations

import importlib.resources
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entmtp.errors import EntmtpError
from entmtp.schedule.bank import bank_dir, bank_from_document, bank_policy, check_bank_provenance, list_banks, load_bank
from entmtp.schedule.policies import DRAFT
from entmtp.schedule.signals import Signals
from entmtp.schedule.spec import RATE_SIGNALS
from entmtp.trees.files import load_tree
from entmtp.trees.tree import MAX_DEPTH, MAX_RANK, SHIPPED_TREES_PACKAGE
from entmtp.tune.loading import read_any_bank
from entmtp.tune.source import derive_bank, is_source

CPU = torch.device("cpu")
# The same inputs on every run (no flaky failures in a shared suite, no .hypothesis folder);
# to explore new ones, run with derandomize False and more max_examples. tmp_path is shared
# by a test's examples: each one overwrites the same file.
FUZZ = {"deadline": None, "database": None, "derandomize": True,
        "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}

HUGE_INTS = st.sampled_from([2**31, 2**53 + 1, 10**12, 2**63, -(2**63) - 1, 2**64, 10**100, 10**4000])
SCALARS = (st.none() | st.booleans() | st.integers() | HUGE_INTS | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25)


def one_line_error_or_value(load, *args):
    """load(*args), or None when it raised a well-formed EntmtpError; anything else propagates."""
    try:
        return load(*args)
    except EntmtpError as error:
        message = str(error)
        assert message.strip(), f"empty message from {type(error).__name__}"
        assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"
        assert len(message) < 2000, f"message of {len(message)} characters"
        return None


def write(tmp_path, content, name="fuzz.json"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def nested(depth: int, leaf: str = "0", as_object: bool = False) -> str:
    """JSON text nested `depth` deep (json.dumps itself would refuse past ~1000)."""
    return ('{"k": ' * depth + leaf + "}" * depth) if as_object else ("[" * depth + leaf + "]" * depth)


# --------------------------------------------------------------------------- trees

def use_tree(tree) -> None:
    """What the decoder builds from a tree: its buffers for a top-k wide enough."""
    top_k = max(tree.top_k_needed, 1)
    buffers = tree.buffers(CPU, top_k)
    assert buffers.n_nodes == tree.n_nodes == len(tree.paths) + 1
    assert buffers.tree_bits.shape[0] == tree.n_nodes
    assert int(buffers.medusa_index.max()) <= tree.max_depth * top_k


def check_tree_file(tmp_path, content) -> None:
    tree = one_line_error_or_value(load_tree, write(tmp_path, content))
    if tree is not None:
        use_tree(tree)


RANKS = st.integers(0, 12) | st.integers(-3, -1) | HUGE_INTS | SCALARS


@st.composite
def valid_paths(draw, max_paths: int = 40, max_rank: int = 9):
    """A prefix-closed list of paths, grown under random existing nodes, in random order."""
    paths: list[list] = []
    for _ in range(draw(st.integers(0, max_paths))):
        parent = draw(st.sampled_from([[]] + paths))
        if len(parent) < MAX_DEPTH:
            paths.append(parent + [draw(st.integers(0, max_rank))])
    paths = [list(p) for p in dict.fromkeys(tuple(p) for p in paths)]
    draw(st.randoms()).shuffle(paths)
    return paths


def broken_paths(paths: list, draw) -> list:
    """`paths` with one fault, or made legal but very large."""
    paths = paths if isinstance(paths, list) else []   # an earlier fault may have left anything here
    lists = [p for p in paths if isinstance(p, list) and p]
    fault = draw(st.sampled_from(["rank", "duplicate", "drop_prefix", "bad_path", "deep", "wide", "long_path",
                                  "empty_path", "any"]))
    if fault == "rank" and lists:
        path = draw(st.sampled_from(lists))
        path[draw(st.integers(0, len(path) - 1))] = draw(RANKS)
    elif fault == "duplicate" and lists:
        paths.append(list(draw(st.sampled_from(lists))))
    elif fault == "drop_prefix" and lists:
        paths.remove(draw(st.sampled_from(lists)))
    elif fault == "bad_path":
        paths.insert(draw(st.integers(0, len(paths))), draw(JSON_VALUES))
    elif fault == "deep":   # a chain: legal up to MAX_DEPTH, far deeper than any set of heads past it
        paths = [[0] * depth for depth in range(1, draw(st.sampled_from([8, MAX_DEPTH, MAX_DEPTH + 1, 300])) + 1)]
    elif fault == "wide":   # a star: legal up to MAX_RANK + 1 children
        paths = [[rank] for rank in range(draw(st.sampled_from([500, MAX_RANK + 1, MAX_RANK + 2, 5000])))]
    elif fault == "long_path":
        paths.append([0] * draw(st.integers(2, 3000)))
    elif fault == "empty_path":
        paths.append([])
    else:
        paths = draw(JSON_VALUES)
    return paths


@st.composite
def tree_documents(draw):
    """A valid tree document (about a third of them), or one with one to three faults."""
    document = {"format": "entmtp-tree/1", "name": draw(st.text(min_size=1, max_size=12).filter(str.isprintable)
                                                        .filter(str.strip)),
                "paths": draw(valid_paths(max_rank=draw(st.sampled_from([3, 9, MAX_RANK]))))}
    if draw(st.booleans()):
        document["metadata"] = draw(st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        fault = draw(st.sampled_from(["paths"] * 4 + ["format", "name", "metadata", "missing", "extra"]))
        if fault == "paths":
            document["paths"] = broken_paths(document.get("paths", []), draw)
        elif fault == "format":
            document["format"] = draw(st.sampled_from(["entmtp-tree/2", "", "ENTMTP-TREE/1"]) | JSON_VALUES)
        elif fault == "name":
            document["name"] = draw(st.sampled_from(["", " ", "line\nbreak", "x" * 101]) | JSON_VALUES)
        elif fault == "metadata":
            document["metadata"] = draw(JSON_VALUES)
        elif fault == "missing":
            document.pop(draw(st.sampled_from(sorted(document))))
        else:
            document[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    return document


@settings(max_examples=200, **FUZZ)
@given(document=JSON_VALUES)
def test_tree_loader_on_any_json_value(tmp_path, document):
    check_tree_file(tmp_path, document)


@settings(max_examples=350, **FUZZ)
@given(document=tree_documents())
def test_tree_loader_on_plausible_documents(tmp_path, document):
    check_tree_file(tmp_path, document)


@settings(max_examples=60, **FUZZ)
@given(depth=st.sampled_from([10, 200, 900, 990, 1100, 5000, 100_000]), where=st.sampled_from(["top", "paths",
       "path", "metadata"]), as_object=st.booleans())
def test_tree_loader_on_deep_nesting(tmp_path, depth, where, as_object):
    inner = nested(depth, as_object=as_object)
    text = {"top": inner,
            "paths": '{"format": "entmtp-tree/1", "name": "x", "paths": ' + inner + "}",
            "path": '{"format": "entmtp-tree/1", "name": "x", "paths": [[0], ' + inner + "]}",
            "metadata": '{"format": "entmtp-tree/1", "name": "x", "paths": [], "metadata": {"m": ' + inner + "}}"}
    check_tree_file(tmp_path, text[where])


# --------------------------------------------------------------------------- raw files and names

SHIPPED_TREE_TEXT = importlib.resources.files(SHIPPED_TREES_PACKAGE).joinpath("mc_sim_7b_63.json").read_text("utf-8")
# The shipped banks are machine-free sources; the banks fuzzed here are the ones they derive on
# the tests' committed cost curve (what a pinned bank file holds), built once.
SHIPPED_SOURCE_TEXTS = {name: bank_dir().joinpath(name + ".json").read_text(encoding="utf-8") for name in list_banks()}
TEST_CURVE = json.loads((Path(__file__).parent / "data" / "cost-curve.json").read_text())["curve"]
SHIPPED_BANK_TEXTS = {name: json.dumps(derive_bank(json.loads(text), TEST_CURVE))
                      for name, text in SHIPPED_SOURCE_TEXTS.items()
                      if name.endswith(("gsm8k", "litbench"))}


def load_any(path):
    """What `--bank FILE` does with a file: a bank as it is, a source derived (here on the test curve)."""
    document, where = read_any_bank(path)
    return bank_from_document(derive_bank(document, TEST_CURVE) if is_source(document) else document, where)


@st.composite
def raw_files(draw):
    """Bytes that are rarely JSON: noise, cut-off or corrupted shipped files, other encodings."""
    text = draw(st.sampled_from([SHIPPED_TREE_TEXT] + sorted(SHIPPED_BANK_TEXTS.values())[:2]))
    kind = draw(st.sampled_from(["noise", "truncate", "corrupt", "utf16", "bom", "digits", "empty", "nul"]))
    data = text.encode("utf-8")
    if kind == "noise":
        return draw(st.binary(max_size=200))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "corrupt":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x80\x80", b"\x00", b"NaN", b"}", b"\\u"])) \
            + data[at + draw(st.integers(0, 3)):]
    if kind == "utf16":
        return text.encode("utf-16")
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "digits":   # more digits than Python converts to int by default
        return b'{"format": "entmtp-tree/1", "name": "x", "paths": [[' + b"1" * draw(st.integers(4000, 9000)) + b"]]}"
    if kind == "empty":
        return b""
    return data.replace(b'"', b"\x00", 1)


@settings(max_examples=250, **FUZZ)
@given(data=raw_files(), loader=st.sampled_from(["tree", "bank"]))
def test_loaders_on_raw_bytes(tmp_path, data, loader):
    path = write(tmp_path, data)
    if loader == "tree":
        tree = one_line_error_or_value(load_tree, path)
        if tree is not None:
            use_tree(tree)
    else:
        bank = one_line_error_or_value(load_bank, path)
        if bank is not None:
            use_bank(bank)


NAMES = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=100, **FUZZ)
@given(name=NAMES, suffix=st.sampled_from(["", ".json", "/", "\x00.json"]))
def test_loaders_on_odd_names_and_paths(tmp_path, name, suffix):
    # Names are looked up among the shipped files; anything path-like is kept inside tmp_path.
    for load in (load_tree, load_bank):
        bare = name.replace("/", "")
        if not suffix and not bare.endswith(".json"):   # a bare name: a shipped-name lookup only
            one_line_error_or_value(load, bare)
        one_line_error_or_value(load, str(tmp_path / (bare or "x")) + suffix)


def test_a_directory_and_a_missing_file(tmp_path):
    for load in (load_tree, load_bank):
        for target in (tmp_path, tmp_path / "absent.json"):
            with pytest.raises(EntmtpError):
                load(target)


# --------------------------------------------------------------------------- banks

def use_bank(bank) -> None:
    """What make_bank_decoder and the CLI build from a bank: every scheduler's policy, the
    trees' buffers at the heads' top-k, and a few choices."""
    check_bank_provenance_safely(bank)
    heads = bank.provenance.get("heads", {})
    top_k, n_heads = heads.get("top_k", 10), heads.get("n_heads", 4)
    requests = [("static-best", None, None), ("entropy", None, None), ("oracle", None, None),
                ("static", None, bank.trees[0].name), ("static", None, "no-such-tree")]
    requests += [("rate", signal, None) for signal in RATE_SIGNALS]
    for scheduler, signal, tree in requests:
        policy = one_line_error_or_value(bank_policy, bank, scheduler, signal or "entropy", tree)
        if policy is None:
            continue
        members = list(policy.trees) + ([policy.verify_tree] if policy.hindsight else [])
        for member in members:
            try:
                member.check_compatible(n_heads, top_k)
            except EntmtpError:
                continue   # the decoder refuses it with this error
            member.buffers(CPU, top_k)
        for value in (None, -1e9, 0.0, 0.5, 1.5, 1e9):
            choice = policy.choose(Signals(value, value, value, value))
            assert choice in (DRAFT, -1) or 0 <= choice < len(policy.trees), (scheduler, signal, choice)
            if choice == DRAFT and value is not None:
                assert 0 <= policy.refine(value) < len(policy.trees)
        if policy.hindsight:
            assert 0 <= policy.settle((0, 0))[0] < len(policy.trees)


def check_bank_provenance_safely(bank) -> None:
    model = dict(bank.provenance.get("model", {}))
    one_line_error_or_value(check_bank_provenance, bank, model, "fingerprint", "hydra")
    kind = bank.provenance.get("heads", {}).get("kind")
    assert kind is None or isinstance(kind, str)


def check_bank_file(tmp_path, content) -> None:
    bank = one_line_error_or_value(load_bank, write(tmp_path, content))
    if bank is not None:
        use_bank(bank)


def test_every_shipped_bank_survives_the_property(tmp_path):
    for name in SHIPPED_SOURCE_TEXTS:
        use_bank(load_any(bank_dir().joinpath(name + ".json")))
    for text in SHIPPED_BANK_TEXTS.values():
        check_bank_file(tmp_path, text)


@settings(max_examples=25, **FUZZ)
@given(data=st.data())
def test_source_loader_on_mutated_shipped_sources(tmp_path, data):
    """One to three fields of a shipped source, anywhere in it, broken (as for banks):
    it loads and derives a bank every scheduler runs on, or one clear error."""
    document = json.loads(SHIPPED_SOURCE_TEXTS["smollm2-135m-instruct-medusa-litbench"])
    mutate(document, data)
    bank = one_line_error_or_value(load_any, write(tmp_path, document))
    if bank is not None:
        use_bank(bank)


@settings(max_examples=120, **FUZZ)
@given(document=JSON_VALUES, key=st.sampled_from(["", "format", "name", "provenance", "window", "trees",
                                                  "static_best", "hulls", "signals", "tables", "ladder",
                                                  "cost_curve", "peek_ms", "probe", "recommended",
                                                  "calibration_rates"]))
def test_bank_loader_on_any_json_value(tmp_path, document, key):
    """The whole document, or one top-level field of a shipped bank, replaced by any JSON value."""
    if key:
        shipped = json.loads(min(SHIPPED_BANK_TEXTS.values()))
        shipped[key] = document
        document = shipped
    check_bank_file(tmp_path, document)


def mutated(value, draw):
    """A value of the wrong kind, or a bad number, in place of `value`."""
    numbers = [math.nan, math.inf, -math.inf, -1, 0, -0.0, 1e-320, 1e308, 10**12, 2**63, 10**100, True, False]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        numbers += [None, "", "x", [], {}, [value], {"v": value}]
    else:
        numbers += [None, str(value), [value], {}, -value, value * 1000 if abs(value) < 1e100 else value]
    if isinstance(value, list) and value:
        numbers += [value[:draw(st.integers(0, len(value) - 1))], value + value[-1:], value[::-1], value[:1] * 40]
    if isinstance(value, dict) and value:
        numbers += [list(value.values()), list(value)]
    return draw(st.sampled_from(numbers) | JSON_VALUES)


def plausible(value, draw):
    """A value of the same kind that may well be valid: another number in range, a list
    reordered or cut, another legal tree's paths."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return type(value)(draw(st.integers(0, 3)) if isinstance(value, int) else draw(st.floats(0.0, 1.0)))
    if isinstance(value, list) and value and all(isinstance(p, list) and p and isinstance(p[0], int) for p in value):
        return draw(valid_paths(max_paths=30, max_rank=draw(st.sampled_from([3, 9]))))   # a tree's paths
    if isinstance(value, list):
        return draw(st.permutations(value)) if draw(st.booleans()) else value[:draw(st.integers(0, len(value)))]
    if isinstance(value, dict) and value:
        return {k: v for k, v in value.items() if draw(st.integers(0, 4))}
    return value


@settings(max_examples=350, **FUZZ)
@given(name=st.sampled_from(sorted(SHIPPED_BANK_TEXTS)), data=st.data())
def test_bank_loader_on_mutated_shipped_banks(tmp_path, name, data):
    """One to three fields of a shipped bank, anywhere in it, deleted, retyped, made nan,
    negative or huge, truncated, or changed into something of the same kind."""
    document = json.loads(SHIPPED_BANK_TEXTS[name])
    mutate(document, data)
    check_bank_file(tmp_path, document)


def mutate(document, data) -> None:
    for _ in range(data.draw(st.integers(1, 3))):
        parent, key = None, None
        node = document
        # A random walk down from the top: stop, or step into one child.
        while isinstance(node, (dict, list)) and node and (parent is None or data.draw(st.integers(0, 2))):
            keys = sorted(node) if isinstance(node, dict) else range(len(node))
            parent, key = node, data.draw(st.sampled_from(keys))
            node = node[key]
        if parent is None:
            continue
        change = data.draw(st.sampled_from(["delete", "retype", "plausible", "plausible"]))
        if change == "delete" and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = plausible(node, data.draw) if change == "plausible" else mutated(node, data.draw)


# --------------------------------------------------------------------------- what the fuzzer found

def _set(document, where, value):
    *parents, last = where
    for key in parents:
        document = document[key]
    if value is KeyError:
        del document[last]
    else:
        document[last] = value


@pytest.mark.parametrize("where, value, message", [
    # (before: the exception these raised, in the loader or in bank_policy / the decoder)
    (("hulls", "accept"), [[1]], r"every hull must be a list of \[nodes, depth, value\]"),   # ValueError (unpack)
    (("hulls",), None, "'hulls' must be an object"),                                          # AttributeError
    (("hulls", "accept", 0, 0), math.inf, "hull nodes must be an integer"),                   # OverflowError
    (("calibration_rates",), {"x": None}, "calibration rate 'x' must be a finite number"),    # TypeError
    (("calibration_rates",), True, "'calibration_rates' must be an object"),                  # AttributeError
    (("cost_curve",), None, "'cost_curve' must be a list of objects"),                        # TypeError
    (("peek_ms",), None, "peek_ms must be a finite number >= 0"),                             # TypeError
    (("probe", "weights"), [None], "probe weights must be a finite number"),                  # TypeError
    (("window",), 10**400, r"window must be a finite number >= 1 and <= 1e\+06"),             # OverflowError
    (("window",), math.inf, "window must be a finite number"),                  # ZeroDivisionError in the EMA
    (("ladder", "trees"), True, r"so it needs \d+ trees, not True"),                             # TypeError (len)
    (("tables", "overall"), KeyError, "table 'overall' entries must be an object"),  # KeyError in bank_policy
    (("tables", "joint", 0, 0, "p", "0"), {}, "probabilities must be a finite number"),  # TypeError in _rebin
    (("tables", "entropy", 0, "steps"), "x", "steps must be an integer"),             # TypeError in bank_policy
    (("tables", "now"), [], "tables for 'now' must be a list of 5 tables"),          # UsageError (exit 2)
    (("provenance", "heads", "top_k"), [10], "heads top_k must be an integer from 1 to 1024"),   # TypeError
    (("provenance", "heads", "n_heads"), {}, "heads n_heads must be an integer from 1 to 32"),   # TypeError
    (("provenance", "model", "hidden_size"), "576", "hidden_size must be an integer"),           # TypeError
    (("provenance", "model"), [], "provenance 'model' must be an object"),                       # AttributeError
    (("recommended",), {"scheduler": "static"}, "'recommended' must name a scheduler"),  # UsageError at decode
    (("static_best",), ["n0"] * 900, r"static_best \['n0', 'n0', .*\.\.\.\] is not one of its trees"),  # 8 KB line
])
def test_bank_fields_that_crashed(tmp_path, where, value, message):
    document = json.loads(SHIPPED_BANK_TEXTS["smollm2-135m-instruct-hydra-gsm8k"])
    _set(document, where, value)
    with pytest.raises(EntmtpError, match=message) as caught:
        load_bank(write(tmp_path, document))
    assert type(caught.value) is EntmtpError and "\n" not in str(caught.value) and "fuzz.json" in str(caught.value)


@pytest.mark.parametrize("content, message", [
    # (before: ValueError from json, RecursionError from json, RecursionError from freezing the
    # metadata, ValueError "Overflow when unpacking long long" from torch.tensor in buffers)
    ('{"format": "entmtp-tree/1", "name": "x", "paths": [[' + "1" * 4400 + "]]}", "more than 4300 digits"),
    (nested(100_000), "nested too deeply"),
    ('{"format": "entmtp-tree/1", "name": "x", "paths": [], "metadata": ' + nested(500, "{}", True) + "}",
     "nested more than 32 levels"),
    ('{"format": "entmtp-tree/1", "name": "x", "paths": [[18446744073709551616]]}', "too large rank"),
])
def test_tree_files_that_crashed(tmp_path, content, message):
    with pytest.raises(EntmtpError, match=message):
        load_tree(write(tmp_path, content))


def test_a_path_with_a_nul_character(tmp_path):
    for load in (load_tree, load_bank):   # pathlib raised ValueError: embedded null byte
        with pytest.raises(EntmtpError, match="NUL character"):
            load(str(tmp_path / "a\x00b.json"))
