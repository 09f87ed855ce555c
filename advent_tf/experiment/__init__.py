"""An experiment: its typed config, the factory that builds it, its run directory and weights."""
