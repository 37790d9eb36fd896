"""Job groups: parameter sweeps and sharded runs."""
