"""Differential privacy for the feature denoiser: accounting, DP-SGD with K noise draws per
example, dp-promise's two phases, membership inference and auditing."""
