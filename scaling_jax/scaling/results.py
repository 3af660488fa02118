"""results.csv: one row per training run (params, tokens, loss, anything else), read and validated."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from scaling_jax.scaling.validate import check_points

log = logging.getLogger(__name__)

REQUIRED = ("params", "tokens", "loss")


def read_results(path, required=REQUIRED) -> dict[str, np.ndarray]:
    """Columns of a results CSV by name: the `required` ones as positive finite float64 arrays,
    the others kept as they are (float arrays where every value parses, else strings).

    Exact duplicate rows (a run appended twice) are dropped with one warning naming their lines.

    Raises ValueError naming the file and the problem: a missing column (with the columns
    present), a value that is not a number, or one that is not positive and finite (with its row
    and line), or no rows at all.
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in (reader.fieldnames or [])]
            raw_rows = [[value.strip() if isinstance(value, str) else "" for value in row.values()]
                        for row in reader]
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: cannot read as CSV ({err})") from None
    missing = [name for name in required if name not in header]
    if missing:
        present = ", ".join(header) if header else "none (empty file)"
        raise ValueError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(m) for m in missing)}; columns present: {present}")
    if not raw_rows:
        raise ValueError(f"{path}: no data rows under the header")
    first_seen: dict[tuple, int] = {}
    repeats: list[tuple[int, int]] = []  # (row, the earlier row it repeats)
    for i, row in enumerate(raw_rows):
        if tuple(row) in first_seen:
            repeats.append((i, first_seen[tuple(row)]))
        else:
            first_seen[tuple(row)] = i
    origin = sorted(first_seen.values())  # kept row -> its row in the file
    if repeats:
        # The same run counted twice would weigh it double in every fit and narrow the bootstrap
        # intervals as if it were independent evidence.
        log.warning("%s: dropped %d duplicate row%s (%s); each run counts once", path, len(repeats),
                    "s" if len(repeats) > 1 else "",
                    ", ".join(f"line {i + 2} repeats line {j + 2}" for i, j in repeats[:5])
                    + (", ..." if len(repeats) > 5 else ""))
        raw_rows = [raw_rows[i] for i in origin]

    def where(i: int) -> str:  # data row i is line i + 2 (line 1 is the header)
        i = origin[i]
        return f"row {i + 1} (line {i + 2} of {path.name})"

    columns_raw = {name: [row[j] if j < len(row) else "" for row in raw_rows]
                   for j, name in enumerate(header)}
    numeric = {}
    for name in required:
        values = []
        for i, text in enumerate(columns_raw[name]):
            try:
                values.append(float(text))
            except ValueError:
                raise ValueError(f"{path}: column {name!r} must hold numbers, but {where(i)} "
                                 f"has {text!r}") from None
        numeric[name] = values
    try:
        checked = check_points(numeric, where=where)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    out: dict[str, np.ndarray] = dict(checked)
    for name, texts in columns_raw.items():
        if name in out:
            continue
        try:
            out[name] = np.array([float(t) for t in texts])
        except ValueError:
            out[name] = np.array(texts, dtype=object)
    return out


def write_results(path, rows: list[dict], required=REQUIRED) -> Path:
    """Writes rows (dicts) as CSV: the required columns first, then the others in first-seen
    order. Rows missing a required column raise ValueError."""
    path = Path(path)
    columns = list(required)
    for i, row in enumerate(rows):
        absent = [name for name in required if name not in row]
        if absent:
            raise ValueError(f"row {i} has no {', '.join(absent)}")
        columns += [name for name in row if name not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path
