"""The project's JSON files (trees, banks, calibrations, configs, caches): one
reader, with one EntmtpError naming the file for every way it can fail, and one
atomic writer."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from entmtp.errors import EntmtpError
from entmtp.outputs import write_atomically


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
    except ValueError:  # a NUL in the path
        raise EntmtpError(f"{where} cannot be read: a path cannot contain a NUL character") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise EntmtpError(f"{where} cannot be read: {reason}") from None


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise EntmtpError(f"{where}: not valid JSON: line {error.lineno} column {error.colno}: {error.msg}") from None
    except RecursionError:
        raise EntmtpError(f"{where}: not valid JSON: nested too deeply to read") from None
    except ValueError:  # Python refuses to parse an integer of more than 4300 digits
        raise EntmtpError(f"{where}: not valid JSON: an integer has more than 4300 digits") from None


def read_json(path: str | os.PathLike, where: Optional[str] = None) -> Any:
    where = where or str(path)
    return parse_json(read_text(path, where), where)


def write_json(path: str | os.PathLike, document: Any, **dumps: Any) -> Path:
    """Write `document` so that readers see the old file or the whole new one, never
    a torn one (a temporary file in the same folder, then a rename)."""
    text = json.dumps(document, **dumps) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
