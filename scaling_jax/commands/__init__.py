"""The verbs' top-level flow above the trainer: bench, predict, sweep (`scaling_jax.cli` parses)."""
