"""Reading the project's JSON files (trees, banks, calibrations, configs): one
reader, one EntmtpError naming the file for every way it can fail."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from entmtp.errors import EntmtpError


def read_text(path: str | os.PathLike, where: Optional[str] = None) -> str:
    """A UTF-8 file's text. `where` names the file in errors ("tree file 'x.json'");
    the path itself by default."""
    where = where or str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EntmtpError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise EntmtpError(f"{where} is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise EntmtpError(f"{where} cannot be read: {reason}") from None


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise EntmtpError(f"{where}: not valid JSON: line {error.lineno} column {error.colno}: {error.msg}") from None


def read_json(path: str | os.PathLike, where: Optional[str] = None) -> Any:
    where = where or str(path)
    return parse_json(read_text(path, where), where)
