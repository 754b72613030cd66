"""Tree JSON files: the trees shipped in entmtp.trees_data (the repository's trees/
folder), loading one by name or path, and writing one."""
from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, Mapping

from entmtp.errors import EntmtpError
from entmtp.jsonfile import parse_json, read_json
from entmtp.trees.tree import SHIPPED_TREES_PACKAGE, Tree, _thaw_json, _tree_from_document


def _read_tree_file(path: Path) -> Tree:
    where = f"tree file {str(path)!r}"
    return _tree_from_document(read_json(path, where), where)


def _tree_from_text(text: str, where: str) -> Tree:
    return _tree_from_document(parse_json(text, where), where)


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
        raise EntmtpError(
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
