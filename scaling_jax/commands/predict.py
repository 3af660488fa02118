"""`scaling-jax predict`: entities for token classification, labels for classification, text for LMs
(`scaling_jax.generate` with a KV cache; `--chat` applies the tokenizer's chat template)."""
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
from scaling_jax.models import KNOWN_MODELS, fetch_model, load_pretrained, load_tokenizer
from scaling_jax.models.generate import generate, left_pad, pick_token
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
    """(model, params, tokenizer, label_names) from a run directory, a Hugging Face directory or a
    known alias (`smollm2-135m`, fetched into the cache once)."""
    model_dir = fetch_model(str(model_dir)) if str(model_dir) in KNOWN_MODELS else Path(model_dir)
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
            "causal_lm" if "CausalLM" in arch or "LMHead" in arch or hf.get("model_type") == "gpt2" else "base")
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


def prompt_ids(tokenizer, text: str, chat: bool = False) -> list[int]:
    """The prompt's token ids; with `chat`, `text` is one user turn through the tokenizer's chat
    template (with the generation prompt), an error for a tokenizer that has none."""
    if not chat:
        return list(tokenizer(text)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("predict --chat: this model's tokenizer has no chat template")
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def generate_texts(model, params, tokenizer, prompts: list[str], *, max_new_tokens: int = 40, top_k: int = 0,
                   top_p: float = 1.0, temperature: float = 1.0, seed: int = 0, chat: bool = False) -> list[str]:
    """Continuations of `prompts` (one left-padded batch) by `scaling_jax.generate` with a KV cache:
    greedy when top_k == 0 and top_p >= 1, else top-k / nucleus sampling at `temperature`. Each text
    is the prompt's decoded tokens followed by the new ones, up to and without EOS."""
    rows = [prompt_ids(tokenizer, t, chat) for t in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, mask = left_pad(rows, pad)
    eos = tokenizer.eos_token_id
    new = np.asarray(generate(model, params, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=pad, sample=top_k > 0 or top_p < 1.0, temperature=temperature,
                              top_k=top_k, top_p=top_p, rng=jax.random.PRNGKey(seed)))
    texts = []
    for row, out in zip(rows, new):
        out = list(out)
        if eos is not None and eos in out:
            out = out[:out.index(eos)]
        texts.append(tokenizer.decode(row + out, skip_special_tokens=chat))
    return texts


def sample_token(logits_V: jax.Array, key: jax.Array, *, top_k: int = 0, top_p: float = 1.0,
                 temperature: float = 1.0) -> jax.Array:
    """One token of a V-vector of logits: greedy when top_k == 0 and top_p >= 1, else the top-k
    and/or nucleus draw of `scaling_jax.models.generate.pick_token`."""
    return pick_token(jnp.asarray(logits_V)[None], key, sample=top_k > 0 or top_p < 1.0,
                      temperature=jnp.float32(temperature), top_k=jnp.int32(top_k), top_p=jnp.float32(top_p))[0]


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
            (out,) = generate_texts(model, params, tokenizer, [text], max_new_tokens=args.max_new_tokens,
                                    top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                                    seed=args.seed, chat=getattr(args, "chat", False))
            row = {"prompt": text, "text": out}
        else:
            raise ConfigError(f"predict: task {model.task!r} has no prediction output")
        print(json.dumps(row), flush=True)
    if not count:
        raise DataError("predict: no input text (stdin held no non-blank line); pipe text lines in or "
                        "give --text")
    return 0
