"""A small byte-level BPE (or plain bytes) trained on a run's own training files with `tokenizers`, saved beside the run."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from scaling_jax.errors import ConfigError

EOS = "<|endoftext|>"
BYTES = 257  # the 256 byte symbols and EOS: a BPE of this size has no merges, i.e. a byte tokenizer
META = "bpe_source.json"  # which files and size the tokenizer was trained on


def _source(files: Sequence[Path], vocab_size: int) -> dict:
    h = hashlib.sha256()
    for f in sorted(Path(f) for f in files):
        h.update(f.name.encode() + b"\0" + Path(f).read_bytes())
    return {"vocab_size": int(vocab_size), "files": len(files), "sha256": h.hexdigest()}


def train_bpe(files: Sequence[Path], vocab_size: int, out_dir: Path) -> Path:
    """Trains a byte-level BPE of `vocab_size` pieces (EOS included; BYTES = bytes only) on `files`
    and saves it in `out_dir` as a transformers tokenizer (tokenizer.json, tokenizer_config.json)
    with META naming its source. A directory already holding the tokenizer of these files and size
    is kept; one trained on other files or another size is a ConfigError (delete it or point
    data.tokenizer elsewhere). Written atomically (a temporary sibling renamed into place)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # heavy: only when used
    from transformers import PreTrainedTokenizerFast

    if vocab_size < BYTES:
        raise ConfigError(f"data.bpe_vocab: a byte-level BPE needs at least {BYTES} pieces (256 bytes and EOS), "
                          f"got {vocab_size}")
    if not files:
        raise ConfigError("data.bpe_vocab: data.train lists no files to train the tokenizer on")
    out_dir = Path(out_dir)
    source = _source(files, vocab_size)
    if (out_dir / "tokenizer.json").is_file():
        meta = out_dir / META
        old = json.loads(meta.read_text()) if meta.is_file() else None
        if old != source:
            raise ConfigError(f"data.tokenizer: {out_dir} holds a tokenizer not trained by data.bpe_vocab={vocab_size} "
                              f"on these data.train files ({META}: {old}); remove it or set data.tokenizer")
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"data.tokenizer: {out_dir} exists and holds no tokenizer.json; data.bpe_vocab trains into "
                          f"a new directory (leave data.tokenizer empty for <run.dir>/tokenizer)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(f) for f in files], trainer)
    if tok.get_vocab_size() != vocab_size:
        raise ConfigError(f"data.bpe_vocab: the training files yield only {tok.get_vocab_size()} pieces, "
                          f"fewer than {vocab_size}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        fast.save_pretrained(tmp)
        (tmp / META).write_text(json.dumps(source, indent=1) + "\n")
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process got there first: keep theirs (same files, same result)
            shutil.rmtree(tmp, ignore_errors=True)
            if not (out_dir / "tokenizer.json").is_file():
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


__all__ = ["BYTES", "EOS", "train_bpe"]
