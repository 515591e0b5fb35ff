"""featdiff: long-tailed recognition with diffusion models in feature space."""

__version__ = "0.1.0"
