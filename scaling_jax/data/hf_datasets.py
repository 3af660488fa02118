"""NER corpora through Hugging Face `datasets`: local JSON/parquet/CSV files or a hub copy -> `Sentence`s.

Rows hold a list of words (`tokens`) and a list of tags (`ner_tags`), the tags either strings or
class ids named by the column's `ClassLabel` feature (or by `label_names`). `datasets` 4 and later
run no dataset scripts, so only script-free hub copies load; offline, pass files.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scaling_jax.data.conll import Sentence, check_tag
from scaling_jax.errors import DataError

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_ner(source: str | Path, *, data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
             tokens_column: str = "tokens", tags_column: str = "ner_tags",
             label_names: Sequence[str] | None = None, labels: Sequence[str] | None = None,
             cache_dir: str | Path | None = None) -> dict[str, list[Sentence]]:
    """Load every split of an NER dataset as `{split: [Sentence, ...]}`.

    source: "json" / "parquet" / "csv" with `data_files` ({split: path(s)} or path(s), which
      `datasets` names "train"); a local file or folder (the builder follows the file extension);
      otherwise a hub dataset name, loaded only when the hub is reachable.
    label_names: names of integer tags when the column has no `ClassLabel` feature (plain JSON).
    labels: the allowed tag set; without it tags must be O / B-x / I-x.
    Raises `DataError` naming the source, split and row for a bad row.
    """
    import datasets

    kw: dict[str, Any] = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
    name = str(source)
    path = Path(name)
    if name in set(FILE_BUILDERS.values()):
        if data_files is None:
            raise DataError(f"load_ner({name!r}) needs data_files")
        ds = datasets.load_dataset(name, data_files=_str_files(data_files), **kw)
    elif path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{path}: unknown file type {path.suffix!r} (use {sorted(FILE_BUILDERS)})")
        ds = datasets.load_dataset(builder, data_files={"train": str(path)}, **kw)
    elif path.is_dir() or data_files is not None:
        ds = datasets.load_dataset(name, data_files=_str_files(data_files) if data_files else None, **kw)
    else:
        try:
            ds = datasets.load_dataset(name, **kw)
        except Exception as e:  # offline, missing, or a script-based dataset
            raise DataError(f"could not load {name!r} from the Hugging Face hub ({type(e).__name__}: "
                            f"{e}); pass local files instead, e.g. load_ner('json', "
                            f"data_files={{'train': 'train.jsonl'}})") from e
    return {split: sentences_from_dataset(d, tokens_column=tokens_column, tags_column=tags_column,
                                          label_names=label_names, labels=labels,
                                          where=f"{name}[{split}]")
            for split, d in ds.items()}


def _str_files(files):
    if isinstance(files, Mapping):
        return {k: _str_files(v) for k, v in files.items()}
    if isinstance(files, (str, Path)):
        return str(files)
    return [str(f) for f in files]


def tag_names(dataset, tags_column: str = "ner_tags") -> list[str] | None:
    """The `ClassLabel` names of a tags column (a list of class labels), or None."""
    feature = dataset.features.get(tags_column)
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def sentences_from_dataset(dataset, *, tokens_column: str = "tokens", tags_column: str = "ner_tags",
                           label_names: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                           where: str = "dataset") -> list[Sentence]:
    """Convert one `datasets.Dataset` split (rows with word and tag lists) to `Sentence`s."""
    for col in (tokens_column, tags_column):
        if col not in dataset.column_names:
            raise DataError(f"{where}: no column {col!r} (columns: {dataset.column_names})")
    names = tag_names(dataset, tags_column) or (list(label_names) if label_names else None)
    allowed = frozenset(labels) if labels is not None else None
    out = []
    for row, (tokens, tags) in enumerate(zip(dataset[tokens_column], dataset[tags_column])):
        at = f"{where} row {row}"
        tokens, tags = _as_list(tokens), _as_list(tags)
        if len(tokens) != len(tags):
            raise DataError(f"{at}: {len(tokens)} tokens but {len(tags)} tags")
        if not tokens:
            continue  # an empty row is not a sentence (as a blank line in CoNLL)
        str_tags = []
        for t in tags:
            if isinstance(t, str) and t.isdigit() and names is not None:
                t = int(t)  # CSV cells hold ids as text
            if not isinstance(t, str):
                if names is None:
                    raise DataError(f"{at}: integer tags but no ClassLabel feature; pass label_names")
                if not 0 <= int(t) < len(names):
                    raise DataError(f"{at}: tag id {t} outside the {len(names)} label names")
                t = names[int(t)]
            check_tag(t, allowed, at)
            str_tags.append(t)
        out.append(Sentence(tuple(str(w) for w in tokens), tuple(str_tags)))
    return out


def _as_list(value) -> list:
    """A list column value; CSV cells hold a JSON list or whitespace-separated items."""
    if isinstance(value, str):
        s = value.strip()
        return list(json.loads(s)) if s.startswith("[") else s.split()
    return list(value)
