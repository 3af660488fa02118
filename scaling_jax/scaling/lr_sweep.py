"""Learning-rate sweeps: the best rate per width on a grid, and how far it moves across widths (muP transfer)."""
from __future__ import annotations

from collections import Counter

import numpy as np


def best_learning_rates(rows: list[dict], group_by=("d_model",)) -> list[dict]:
    """Per group of runs (the same values of `group_by`, e.g. width and budget): the grid of
    learning rates `lrs` with their `losses`, the best (lowest loss) rate `best_lr` and its index,
    and `at_edge` when the best is the grid's smallest or largest rate (the optimum may lie beyond).
    Runs with a non-finite loss count as worst. Groups come out sorted."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k, "") for k in group_by), []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: tuple((0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in k)):
        runs = sorted(groups[key], key=lambda r: float(r["lr"]))
        lrs = [float(r["lr"]) for r in runs]
        losses = [float(r["loss"]) if r["loss"] not in ("", None) else float("nan") for r in runs]
        finite = np.where(np.isfinite(losses), losses, np.inf)
        i = int(np.argmin(finite))
        out.append({**dict(zip(group_by, key)), "lrs": lrs, "losses": losses, "best_lr": lrs[i],
                    "best_loss": losses[i], "best_index": i, "at_edge": i in (0, len(lrs) - 1)})
    return out


def transfer(best: list[dict]) -> dict:
    """How far the best rate moves across the groups, in grid steps: `mode_lr` (the rate most groups
    pick), `steps_from_mode` per group, `same` (groups at the mode) and `within_one` (at most one
    grid step away). Every group must share one grid."""
    grids = {tuple(b["lrs"]) for b in best}
    if len(grids) != 1:
        raise ValueError("the groups were trained on different learning-rate grids")
    counts = Counter(b["best_index"] for b in best)
    mode = max(counts, key=lambda i: (counts[i], -i))
    steps = [b["best_index"] - mode for b in best]
    return {"mode_lr": best[0]["lrs"][mode], "steps_from_mode": steps, "same": sum(s == 0 for s in steps),
            "within_one": sum(abs(s) <= 1 for s in steps), "groups": len(best)}


def lr_table(best: list[dict]) -> str:
    """A Markdown table: loss per learning rate per group, the best marked with *."""
    lrs = best[0]["lrs"] if best else []
    keys = [k for k in best[0] if k not in ("lrs", "losses", "best_lr", "best_loss", "best_index", "at_edge")] \
        if best else []
    head = "| " + " | ".join(keys) + " | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr |"
    lines = [head, "| " + " | ".join("---" for _ in keys) + " |" + " ---: |" * (len(lrs) + 1)]
    for b in best:
        cells = [f"{v:.4f}{'*' if i == b['best_index'] else ''}" if np.isfinite(v) else "diverged"
                 for i, v in enumerate(b["losses"])]
        edge = " (grid edge)" if b["at_edge"] else ""
        lines.append("| " + " | ".join(str(b[k]) for k in keys) + " | " + " | ".join(cells)
                     + f" | {b['best_lr']:g}{edge} |")
    return "\n".join(lines)


__all__ = ["best_learning_rates", "lr_table", "transfer"]
