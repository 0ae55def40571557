"""The on-disk layout TF Serving loads: ``<root>/<name>/<version>/``, versions are increasing integers.

A version appears only when complete: it is written into a hidden temporary directory beside
the versions and renamed into place, so a server polling the folder never sees half a model
(and an interrupted export leaves no half-written version behind).

Each version holds the SavedModel at its top (``saved_model.pb``, ``variables/``, ``assets/``),
any other artifacts (``model.tflite``) and ``kerasllm.json``, the manifest that tells
``kerasllm.load`` what kind of model this is and which files it has.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

MANIFEST = "kerasllm.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes '²', which int() refuses


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(path) -> Path:
    """Give ``path`` the modes an ordinary ``open``/``mkdir`` would have (0644 files, 0755 folders under
    the usual umask 022): ``tempfile`` creates 0600/0700, which a server running as another user (a
    container's non-root user, a shared volume) cannot read."""
    path = Path(path)
    mode = 0o777 if path.is_dir() else 0o666
    os.chmod(path, mode & ~_umask())
    return path


def check_model_name(name: str) -> str:
    """Model names become folder names and URL parts: letters, digits, '.', '_', '-'; no path tricks."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(
            f"invalid model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def versions(model_dir) -> list[int]:
    """The complete versions under ``model_dir``, oldest first (temporary folders are not versions)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if _VERSION_RE.fullmatch(p.name) and p.is_dir())


def resolve_version(path, version=None) -> Path:
    """``path`` may be a model folder (``saved_models/sms``; newest version unless ``version``)
    or one version folder (``saved_models/sms/3``). Returns the version folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if (path / MANIFEST).is_file() and version is None:
        return path
    found = versions(path)
    if version is not None:
        if int(version) not in found:
            raise FileNotFoundError(f"{path} has no version {version}; versions present: {found or 'none'}")
        return path / str(int(version))
    if not found:
        raise FileNotFoundError(
            f"{path} holds no model version: expected {path}/<version>/{MANIFEST} as written by tasks.export"
        )
    return path / str(found[-1])


def read_manifest(version_dir) -> dict:
    version_dir = Path(version_dir)
    try:
        with open(version_dir / MANIFEST, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{version_dir} is not a kerasllm export: {MANIFEST} is missing"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{version_dir / MANIFEST} is damaged: {e}") from None
    if not isinstance(manifest, dict) or "kind" not in manifest:
        raise ValueError(f"{version_dir / MANIFEST} is not a kerasllm manifest (no 'kind')")
    return manifest


@contextmanager
def atomic_file(path, suffix=""):
    """Yield a temporary path beside ``path`` to write; when the block ends without error it becomes
    ``path`` in one rename, readable by others, so a reader never sees half a file. On error it is
    removed and ``path`` keeps what it had. ``suffix``: for writers that go by the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        make_readable(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes):
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str):
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, obj):
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)


def publish(model_dir, write, version=None) -> Path:
    """Call ``write(tmp_dir)`` to fill a temporary folder, then rename it to
    ``model_dir/<version>`` (the next free integer unless given). Returns the version folder.
    If ``write`` fails, nothing is left behind."""
    model_dir = Path(model_dir)
    check_model_name(model_dir.name)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = make_readable(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
    try:
        write(tmp)
        number = int(version) if version is not None else (versions(model_dir) or [0])[-1] + 1
        while (model_dir / str(number)).exists():
            if version is not None:
                raise FileExistsError(f"{model_dir / str(number)} already exists; versions are never overwritten")
            number += 1
        final = model_dir / str(number)
        os.rename(tmp, final)  # atomic on one file system
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(path, write, marker, kind) -> Path:
    """Save a model folder atomically: ``write(tmp)`` fills a temporary folder beside ``path``,
    which then takes ``path``'s place. An existing ``path`` is replaced only if it holds ``marker``
    (a previous save of the same kind) or is an empty folder; anything else is left alone."""
    path = Path(path)
    if path.exists() and not (path / marker).is_file() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not a {kind}: refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_readable(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rename(path, old / "previous")
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
