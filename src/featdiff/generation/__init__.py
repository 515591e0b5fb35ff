"""Pseudo-features: how many per class, how they are sampled from a trained denoiser, and which
ones the AID/OOD filter keeps."""
