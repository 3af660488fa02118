"""CoNLL-style NER files (`token<TAB>tag` per line, sentences split by blank lines) -> `Sentence`s."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scaling_jax.errors import DataError

# BIO / IOB tags: `O`, `B-type`, `I-type` (the type is any non-empty string without whitespace).
TAG_PATTERN = re.compile(r"^(O|[BI]-\S+)$")


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words and their tags (equal length; `tags` is empty when unlabelled)."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...] = ()

    def __post_init__(self):
        if self.tags and len(self.tags) != len(self.tokens):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.tags)} tags")


def check_tag(tag: str, allowed: frozenset[str] | None, where: str) -> None:
    """Raise `DataError` naming `where` if `tag` is not in `allowed` (when given) or is not BIO."""
    if allowed is not None:
        if tag not in allowed:
            raise DataError(f"{where}: unknown tag {tag!r} (allowed: {sorted(allowed)})")
    elif not TAG_PATTERN.match(tag):
        raise DataError(f"{where}: tag {tag!r} is not O, B-<type> or I-<type>")


def read_conll(path: str | Path, labels: Iterable[str] | None = None) -> list[Sentence]:
    """Read a CoNLL NER file: two columns per line (tab-separated, or whitespace-separated when the
    line has no tab), a blank or whitespace-only line between sentences, `-DOCSTART-` lines skipped.

    `labels`: the allowed tag set; without it every tag must match `O` / `B-x` / `I-x`.
    Raises `DataError` naming `file:line` for a line without exactly two fields, a bad tag, or a
    file that holds no sentence.
    """
    path = Path(path)
    allowed = frozenset(labels) if labels is not None else None
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush():
        if tokens:
            sentences.append(Sentence(tuple(tokens), tuple(tags)))
            tokens.clear()
            tags.clear()

    lineno = 0
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            # A tab-separated line may hold a token with inner spaces; otherwise split on whitespace.
            fields = line.split("\t") if "\t" in line else line.split()
            where = f"{path}:{lineno}"
            if fields[0].startswith("-DOCSTART-"):
                flush()
                continue
            if len(fields) != 2:
                raise DataError(f"{where}: expected 2 fields (token, tag), found {len(fields)}: {line!r}")
            token, tag = fields[0], fields[1].strip()
            if not token:
                raise DataError(f"{where}: empty token: {line!r}")
            check_tag(tag, allowed, where)
            tokens.append(token)
            tags.append(tag)
    flush()
    if not sentences:
        raise DataError(f"{path}:1: no sentences in file ({lineno} lines)")
    return sentences


def label_set(sentences: Iterable[Sentence]) -> list[str]:
    """The tags used in `sentences`, sorted, with `O` first (present even if unused)."""
    seen = {t for s in sentences for t in s.tags}
    seen.discard("O")
    return ["O"] + sorted(seen)


def entity_types(labels: Iterable[str]) -> list[str]:
    """The sorted entity types named by a tag list (`B-person` -> `person`)."""
    return sorted({t[2:] for t in labels if t != "O"})


def entity_starts(sentences: Iterable[Sentence]) -> tuple[int, int]:
    """(entities that begin with `I-x`, entities that begin with `B-x`), where an entity begins
    after `O`, at the sentence start or after another type. IOB1 begins them with `I-` (`B-`
    only splits two touching entities of one type); IOB2 always with `B-`."""
    i_starts = b_starts = 0
    for s in sentences:
        prev = "O"
        for tag in s.tags:
            if tag != "O" and (prev == "O" or prev[2:] != tag[2:]):
                if tag.startswith("I-"):
                    i_starts += 1
                else:
                    b_starts += 1
            prev = tag
    return i_starts, b_starts


def detect_scheme(sentences: Iterable[Sentence]) -> str:
    """"IOB1" when at least as many entities begin with `I-x` as with `B-x` (and some do), else
    "IOB2". By majority, so a few stray `I-x` in IOB2 data do not switch the scoring; callers
    report the minority (`entity_starts`)."""
    i_starts, b_starts = entity_starts(sentences)
    return "IOB1" if i_starts and i_starts >= b_starts else "IOB2"


def tag_ids(sentences: Sequence[Sentence], labels: Sequence[str]) -> list[list[int]]:
    """Tags as integer ids into `labels`; an unknown tag raises `DataError` naming the sentence."""
    index = {t: i for i, t in enumerate(labels)}
    out = []
    for n, s in enumerate(sentences):
        try:
            out.append([index[t] for t in s.tags])
        except KeyError as e:
            raise DataError(f"sentence {n}: tag {e.args[0]!r} not in labels {list(labels)}") from None
    return out
