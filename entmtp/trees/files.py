"""Tree JSON files: the trees shipped in entmtp.trees_data (the repository's trees/
folder), loading one by name or path, and writing one."""
from __future__ import annotations

import importlib.resources
import json
import os
import stat
from pathlib import Path
from typing import Any, Mapping

from entmtp.errors import EntmtpError, UsageError
from entmtp.jsonfile import parse_json, read_text
from entmtp.trees.tree import SHIPPED_TREES_PACKAGE, Tree, _thaw_json, _tree_from_document

# Tree and bank files are small (a shipped bank is ~17 KB, a tree ~1 KB) and shallow (depth
# 6): refusing more keeps a wrong path (a log, /dev/zero) or a hostile file from eating memory
# or the stack (json, and the code walking the document, recurse once per level).
MAX_FILE_BYTES = 16 << 20
MAX_NESTING = 32


def read_document(path: Path, where: str) -> Any:
    """The JSON document in a user-named tree or bank file; every failure one EntmtpError."""
    if "\0" in str(path):
        raise EntmtpError(f"{where} cannot be read: a path cannot contain a NUL character")
    try:
        info = path.stat()
    except OSError:
        info = None   # read_text names the problem (missing, unreadable)
    if info is not None and not stat.S_ISDIR(info.st_mode):
        if not stat.S_ISREG(info.st_mode):
            raise EntmtpError(f"{where} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise EntmtpError(f"{where} is {info.st_size} bytes; tree and bank files are at most {MAX_FILE_BYTES}")
    return parse_document(read_text(path, where), where)


def parse_document(text: str, where: str) -> Any:
    """parse_json, plus the two ways json.loads fails without a JSONDecodeError, and a nesting bound."""
    try:
        document = parse_json(text, where)
    except RecursionError:
        raise EntmtpError(f"{where}: not valid JSON: nested too deeply to read") from None
    except ValueError:   # "Exceeds the limit (4300 digits) for integer string conversion"
        raise EntmtpError(f"{where}: not valid JSON: an integer has more than 4300 digits") from None
    level, frontier = 0, [document]
    while frontier:   # breadth first, so the check itself cannot recurse too deep
        frontier = [child for value in frontier if isinstance(value, (dict, list))
                    for child in (value.values() if isinstance(value, dict) else value)]
        level += bool(frontier)
        if level > MAX_NESTING:
            raise EntmtpError(f"{where}: JSON nested more than {MAX_NESTING} levels deep")
    return document


def _read_tree_file(path: Path) -> Tree:
    where = f"tree file {str(path)!r}"
    return _tree_from_document(read_document(path, where), where)


def _tree_from_text(text: str, where: str) -> Tree:
    return _tree_from_document(parse_document(text, where), where)


def _shipped_tree_files() -> dict[str, Any]:
    """Shipped tree name -> resource (a Traversable) in the entmtp.trees_data package."""
    try:
        folder = importlib.resources.files(SHIPPED_TREES_PACKAGE)
    except ModuleNotFoundError:
        raise EntmtpError(
            f"the shipped trees package {SHIPPED_TREES_PACKAGE} is not installed; "
            "reinstall entmtp (pip install --no-build-isolation -e .) or pass a path to a .json file"
        ) from None
    return {entry.name[:-len(".json")]: entry for entry in folder.iterdir()
            if entry.name.endswith(".json") and entry.is_file()}


def list_trees() -> list[str]:
    """Names of the trees shipped with entmtp, sorted."""
    return sorted(_shipped_tree_files())


def load_tree(name_or_path: str | os.PathLike) -> Tree:
    """Load a tree from a .json file path, or by the name of a shipped tree."""
    text = os.fspath(name_or_path)
    # A bare word is always a shipped name, so a stray file in the working directory cannot shadow one.
    looks_like_path = (text.endswith(".json") or os.sep in text
                       or (os.altsep is not None and os.altsep in text))
    if looks_like_path:
        return _read_tree_file(Path(text))
    shipped = _shipped_tree_files()
    if text not in shipped:
        # A bare word is what the user typed after --tree: a usage mistake (exit 2); a path
        # to a missing or malformed file stays an EntmtpError (exit 1).
        raise UsageError(
            f"unknown tree {text!r}; shipped trees: {', '.join(sorted(shipped)) or '(none)'} "
            "(or pass a path to a .json file)")
    resource = shipped[text]
    return _tree_from_text(resource.read_text(encoding="utf-8"), f"shipped tree file {resource.name!r}")


def format_tree_document(document: Mapping[str, Any]) -> str:
    """JSON text of a tree document with one path per line (json's indent would put every rank on its own)."""
    lines = ["{"]
    lines.append(f'  "format": {json.dumps(document["format"])},')
    lines.append(f'  "name": {json.dumps(document["name"])},')
    path_lines = [f"    {json.dumps(list(path), separators=(',', ':'))}" for path in document["paths"]]
    lines.append('  "paths": [')
    lines.append(",\n".join(path_lines))
    lines.append("  ],")
    metadata = json.dumps(_thaw_json(document.get("metadata", {})), indent=2, ensure_ascii=False)
    lines.append('  "metadata": ' + metadata.replace("\n", "\n  "))
    lines.append("}")
    return "\n".join(lines) + "\n"


def save_tree(tree: Tree, path: str | os.PathLike) -> None:
    """Write `tree` as an entmtp-tree/1 JSON file that `load_tree` reads back equal."""
    Path(path).write_text(format_tree_document(tree.to_json()), encoding="utf-8")
