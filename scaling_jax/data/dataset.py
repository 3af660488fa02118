"""`Data`: one task's train / valid / test datasets with their label names and notes."""
from __future__ import annotations

from dataclasses import dataclass, field

from scaling_jax.data.arrays import ArrayDataset


@dataclass
class Data:
    train: ArrayDataset
    valid: ArrayDataset | None
    test: ArrayDataset | None
    label_names: list[str] = field(default_factory=list)
    scheme: str = ""  # NER tag scheme read from the data (IOB1 / IOB2)
    notes: dict = field(default_factory=dict)
