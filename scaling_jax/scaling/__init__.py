"""Scaling laws on plain arrays: fits with bootstrap intervals, compute-optimal allocation, GPT-2 families, plots."""
from scaling_jax.scaling.approaches import chinchilla_approach, compare_approaches, lower_envelope
from scaling_jax.scaling.bootstrap import bootstrap_law, percentile_interval, resample_indices
from scaling_jax.scaling.chinchilla import (CHINCHILLA, chinchilla_grid, chinchilla_grids,
                                            chinchilla_loss, fit_chinchilla)
from scaling_jax.scaling.data_constrained import (DATA_CONSTRAINED, data_constrained_loss, effective_sizes,
                                                  fit_data_constrained)
from scaling_jax.flops import train_flops_per_token
from scaling_jax.scaling.family import (gpt2_family, gpt2_flops_per_token, gpt2_matmul_params, gpt2_member,
                                        gpt2_params, width_for_params)
from scaling_jax.scaling.fitting import fit_law
from scaling_jax.scaling.isoflop import fit_isoflop, fit_parabola, group_budgets, run_compute, training_flops
from scaling_jax.scaling.lr_sweep import best_learning_rates, transfer
from scaling_jax.scaling.laws import HUBER_DELTA, Law
from scaling_jax.scaling.optimal import chinchilla_optimal, chinchilla_optimal_ci, isoflop_optimal
from scaling_jax.scaling.powerlaw import (KAPLAN_D, KAPLAN_N, POWER_D, POWER_N, fit_kaplan,
                                          fit_power_law)
from scaling_jax.scaling.results import read_results, write_results
from scaling_jax.scaling.validate import check_points

__all__ = [
    "CHINCHILLA", "DATA_CONSTRAINED", "HUBER_DELTA", "KAPLAN_D", "KAPLAN_N", "Law", "POWER_D", "POWER_N",
    "best_learning_rates", "bootstrap_law", "check_points", "chinchilla_approach", "compare_approaches", "chinchilla_grid", "chinchilla_grids", "chinchilla_loss",
    "chinchilla_optimal", "chinchilla_optimal_ci", "data_constrained_loss", "effective_sizes",
    "fit_chinchilla", "fit_data_constrained", "fit_isoflop", "fit_kaplan",
    "fit_law", "fit_parabola", "fit_power_law", "gpt2_family", "gpt2_flops_per_token", "gpt2_matmul_params",
    "gpt2_member",
    "gpt2_params", "group_budgets", "isoflop_optimal", "lower_envelope", "percentile_interval", "read_results",
    "resample_indices", "run_compute", "train_flops_per_token", "training_flops", "transfer", "width_for_params", "write_results",
]
