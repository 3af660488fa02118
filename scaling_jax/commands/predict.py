"""`scaling-jax predict`: entities for token classification, labels for classification, text for LMs."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from scaling_jax.data.align import entities_from_tags
from scaling_jax.errors import ConfigError, DataError, MissingFileError
from scaling_jax.models import load_pretrained, load_tokenizer
from scaling_jax.train.session import open_session, restore_params, run_config


def _lines(texts: list[str] | None) -> Iterable[str]:
    """The `--text` values, else stdin's non-blank lines; a blank --text or a line that is not
    UTF-8 raises DataError naming it."""
    if texts:
        for i, text in enumerate(texts, start=1):
            if not text.strip():
                raise DataError(f"predict: --text number {i} is empty")
            yield text
        return
    stream = getattr(sys.stdin, "buffer", None)
    for n, raw in enumerate(stream if stream is not None else sys.stdin, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            raise DataError(f"<stdin>:{n}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
        if line.strip():
            yield line.rstrip("\r\n")


def load_for_predict(model_dir: str | Path):
    """(model, params, tokenizer, label_names) from a run directory or a Hugging Face directory."""
    model_dir = Path(model_dir)
    if (model_dir / "config.yaml").is_file():
        cfg = run_config(model_dir, ("mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1"))
        session = open_session(cfg, with_data=False)
        _, trained = restore_params(session)
        return (session.model, session.model_params(trained), session.tokenizer, session.label_names)
    if not (model_dir / "config.json").is_file():
        raise MissingFileError(f"{model_dir}: neither a run directory (config.yaml) nor a Hugging Face "
                                f"model directory (config.json)")
    hf = json.loads((model_dir / "config.json").read_text())
    arch = " ".join(hf.get("architectures") or [])
    task = ("token_classification" if "TokenClassification" in arch else
            "sequence_classification" if "SequenceClassification" in arch else
            "masked_lm" if "MaskedLM" in arch else
            "causal_lm" if hf.get("model_type") == "gpt2" else "base")
    model = load_pretrained(model_dir, task=task)
    labels = [model.id2label[i] for i in sorted(model.id2label)] if model.id2label else []
    return model, model.params, load_tokenizer(model_dir), labels


def predict_entities(model, params, tokenizer, label_names: list[str], text: str) -> list[dict]:
    """Word-level tags (first word piece decides, as in training) -> entity spans with character
    offsets and a score (mean softmax probability of the entity's tags). A text longer than the
    model's positions is tagged in consecutive windows of whole words, as training windows long
    sentences (data/align.py), so no word goes untagged."""
    words, spans = [], []
    for m in _word_spans(text):
        words.append(text[m[0]:m[1]])
        spans.append(m)
    if not words:
        return []
    limit = model.config.max_position_embeddings
    tags, scores = ["O"] * len(words), [1.0] * len(words)
    for lo, hi in _word_windows(tokenizer, words, limit):
        enc = tokenizer(words[lo:hi], is_split_into_words=True, truncation=True, return_tensors="np",
                        max_length=limit)
        logits = model.apply(params, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                             jnp.asarray(enc["token_type_ids"]) if "token_type_ids" in enc else None)
        probs = np.asarray(jax.nn.softmax(logits[0].astype(jnp.float32), -1))
        seen = set()
        for pos, w in enumerate(enc.word_ids(0)):
            if w is None or w in seen:
                continue
            seen.add(w)
            k = int(probs[pos].argmax())
            tags[lo + w], scores[lo + w] = label_names[k], float(probs[pos, k])
    return entities_from_tags(words, tags, scores=scores, char_offsets=spans)


def _word_windows(tokenizer, words: list[str], limit: int) -> list[tuple[int, int]]:
    """[lo, hi) word ranges whose pieces, with the special tokens, fit `limit` positions (a word
    longer than that alone is cut, keeping its first piece, which is the one that decides)."""
    budget = max(1, limit - tokenizer.num_special_tokens_to_add())
    pieces = [max(1, len(ids)) for ids in tokenizer(words, add_special_tokens=False)["input_ids"]]
    out, lo, used = [], 0, 0
    for i, n in enumerate(pieces):
        if used + n > budget and i > lo:
            out.append((lo, i))
            lo, used = i, 0
        used += n
    out.append((lo, len(words)))
    return out


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def generate(model, params, tokenizer, prompt: str, *, max_new_tokens: int = 40, top_k: int = 0,
             top_p: float = 1.0, temperature: float = 1.0, seed: int = 0) -> str:
    """Greedy (top_k=0 and top_p=1) or top-k / nucleus sampling; recomputes the full prefix each
    token (no KV cache: fine for the short generations of a demo)."""
    ids = list(tokenizer(prompt)["input_ids"])
    limit = model.config.n_positions
    rng = jax.random.PRNGKey(seed)
    forward = jax.jit(lambda p, x: model.apply(p, x)[0, -1].astype(jnp.float32))
    for _ in range(max_new_tokens):
        logits = forward(params, jnp.asarray([ids[-limit:]], jnp.int32))
        rng, key = jax.random.split(rng)
        ids.append(int(sample_token(logits, key, top_k=top_k, top_p=top_p, temperature=temperature)))
        if ids[-1] == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids)


def sample_token(logits_V: jax.Array, key: jax.Array, *, top_k: int = 0, top_p: float = 1.0,
                 temperature: float = 1.0) -> jax.Array:
    """Greedy when top_k == 0 and top_p >= 1; else sample from the top-k and/or nucleus set."""
    if top_k == 0 and top_p >= 1.0:
        return jnp.argmax(logits_V)
    logits_V = logits_V / max(temperature, 1e-6)
    if top_k:
        kth = jnp.sort(logits_V)[-top_k]
        logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
    if top_p < 1.0:
        order = jnp.argsort(-logits_V)
        probs = jax.nn.softmax(logits_V[order])
        keep_sorted = jnp.cumsum(probs) - probs < top_p  # the smallest prefix reaching top_p
        keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
        logits_V = jnp.where(keep, logits_V, -jnp.inf)
    return jax.random.categorical(key, logits_V)


def predict_main(args) -> int:
    model, params, tokenizer, labels = load_for_predict(args.model_dir)
    count = 0
    for text in _lines(args.text):
        count += 1
        if model.task == "token_classification":
            row: dict[str, Any] = {"text": text, "entities": predict_entities(model, params, tokenizer,
                                                                               labels, text)}
        elif model.task == "sequence_classification":
            enc = tokenizer([text], truncation=True, return_tensors="np")
            probs = np.asarray(jax.nn.softmax(model.apply(params, jnp.asarray(enc["input_ids"]),
                                                          jnp.asarray(enc["attention_mask"]))[0]))
            k = int(probs.argmax())
            row = {"text": text, "label": labels[k] if labels else k, "score": float(probs[k])}
        elif model.task == "causal_lm":
            row = {"prompt": text, "text": generate(model, params, tokenizer, text,
                                                    max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                                                    top_p=args.top_p, temperature=args.temperature,
                                                    seed=args.seed)}
        else:
            raise ConfigError(f"predict: task {model.task!r} has no prediction output")
        print(json.dumps(row), flush=True)
    if not count:
        raise DataError("predict: no input text (stdin held no non-blank line); pipe text lines in or "
                        "give --text")
    return 0
