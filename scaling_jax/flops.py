"""The project's one FLOP count: training FLOPs per token, used by the bench's MFU, the training log
and the sweep's `flops` column (and so by IsoFLOP budgets)."""
from __future__ import annotations


def train_flops_per_token(matmul_params: int, n_layers: int, seq_len: int, d_attn: int) -> int:
    """6 N + 12 L T d_attn: the matmul FLOPs of one training token, forward and backward.

    N counts the weights that multiply each token once (every dense kernel and the LM head, tied or
    not; not the embedding lookups, biases or norms): 2 N forward, 4 N backward. The attention term
    is Chowdhery et al. 2022 (PaLM), appendix B: per layer, q kᵀ and probs v cost 2 T d_attn each
    forward, times 3 for forward plus backward; T is the full context, not halved for a causal mask
    (Kaplan et al. 2020, table 1, count the same products, forward only, as 2 n_ctx d_attn per
    layer). d_attn = query heads x head size.
    """
    for name, v in (("matmul_params", matmul_params), ("n_layers", n_layers), ("seq_len", seq_len),
                    ("d_attn", d_attn)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return 6 * matmul_params + 12 * n_layers * seq_len * d_attn


__all__ = ["train_flops_per_token"]
