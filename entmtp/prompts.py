"""Prompt files for `entmtp run`: a .txt file is one prompt, a .jsonl file holds
one {"prompt": ...} object per line."""
from __future__ import annotations

import json
from pathlib import Path

from entmtp.errors import EntmtpError


def read_prompt_file(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise EntmtpError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EntmtpError(f"prompt file {path} is not UTF-8 (byte {exc.start})") from None
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text)
    if not text.strip():
        raise EntmtpError(f"prompt file {path} is empty")
    return [text.rstrip("\n")]


def _read_jsonl(path: Path, text: str) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EntmtpError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise EntmtpError(f'{path}:{number}: expected an object with a string "prompt"')
        if not record["prompt"].strip():
            raise EntmtpError(f"{path}:{number}: the prompt is empty")
        prompts.append(record["prompt"])
    if not prompts:
        raise EntmtpError(f"prompt file {path} holds no prompts")
    return prompts
