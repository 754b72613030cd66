"""Prompts for `entmtp run`: a .txt file is one prompt, a .jsonl file holds one
{"prompt": ...} object per line, `-` reads one prompt from standard input, and
`--prompt TEXT` gives one on the command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from entmtp.errors import EntmtpError, UsageError

STDIN = "-"


def read_prompts(prompt: str | None, prompt_file: str | None) -> list[str]:
    """Exactly one of --prompt TEXT and --prompt-file PATH (or - for stdin)."""
    if (prompt is None) == (prompt_file is None):
        raise UsageError("give one of --prompt TEXT or --prompt-file PATH (- reads standard input)")
    if prompt is not None:
        if not prompt.strip():
            raise UsageError("--prompt is empty")
        return [_checked_text(prompt, "--prompt")]
    if prompt_file == STDIN:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("--prompt-file - reads the prompt from standard input, but nothing is piped in")
        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.read() if stream is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EntmtpError(f"the prompt on standard input is not UTF-8 (byte {exc.start})") from None
        if not text.strip():
            raise EntmtpError("the prompt on standard input is empty")
        return [text.rstrip("\n")]
    return read_prompt_file(Path(prompt_file))


def read_prompt_file(path: Path) -> list[str]:
    path = Path(path)
    if path.is_dir():
        raise EntmtpError(f"prompt file {path} is a directory, not a file")
    if not path.exists():  # not is_file(): a pipe (--prompt-file <(...)) is fine
        raise EntmtpError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EntmtpError(f"prompt file {path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise EntmtpError(f"prompt file {path} cannot be read: {exc.strerror or exc}") from None
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text)
    if not text.strip():
        raise EntmtpError(f"prompt file {path} is empty")
    return [text.rstrip("\n")]


def _checked_text(text: str, where: str) -> str:
    """Text the tokenizer can take: a lone surrogate (a "\\ud800" JSON escape, or
    bytes the shell could not decode) is not a character."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EntmtpError(f"{where}: the prompt holds an invalid character at position {exc.start}") from None
    return text


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
        prompts.append(_checked_text(record["prompt"], f"{path}:{number}"))
    if not prompts:
        raise EntmtpError(f"prompt file {path} holds no prompts")
    return prompts
