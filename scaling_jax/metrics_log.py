"""Metrics output: `metrics.jsonl` (one object per line) and TensorBoard event files where installed."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from scaling_jax.errors import DataError

log = logging.getLogger(__name__)


def _plain(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, (bool, int)) and not isinstance(v, float):
        return v
    return f if math.isfinite(f) else str(f)


class MetricsWriter:
    """Appends `{"step", "split", "loss", ...}` lines; `truncate_after(step)` drops lines of a run
    that are newer than the checkpoint it resumes from, so a resumed log equals an uninterrupted one."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
                self._tb = EventFileWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                log.info("tensorboard not installed: metrics go to metrics.jsonl only")

    def truncate_after(self, step: int) -> None:
        """Keeps the rows up to `step` (a torn last line, from a write cut short, is dropped
        with a warning); the file is replaced atomically."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [line for line, row in _rows(self.path) if row["step"] <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(self.path)

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, "time": round(time.time(), 3),
               **{k: _plain(v) for k, v in metrics.items() if k != "report"}}  # the report is printed
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            values = [Summary.Value(tag=f"{split}/{k}", simple_value=float(v))
                      for k, v in row.items() if k not in ("step", "split") and isinstance(v, (int, float))]
            self._tb.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=values)))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line is dropped with a warning, any other bad line
    raises DataError naming the file and line."""
    return [row for _, row in _rows(Path(path))]


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(line, row) for each line; a write cut short leaves at most the last line torn."""
    try:
        lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").split("\n"), start=1)
                 if line.strip()]
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    out = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics row")
        except ValueError:
            if i == len(lines) - 1:
                log.warning("%s:%d: dropping a torn last line (a write cut short): %.60r", path, n, line)
                break
            raise DataError(f"{path}:{n}: not a metrics row (a JSON object with an integer step): "
                            f"{line[:80]!r}") from None
        out.append((line, row))
    return out
