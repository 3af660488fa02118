"""Training: state, pure steps, optimizer, losses and the fit loop."""
