"""Datasets as uint8 ImageSets: LDMLR's CIFAR-LT splits (packed or rebuilt), LDAM splits, digits.

Submodules are imported directly (`from featdiff.data.packed import load_packed`) so that using
one loader never pays for the others' imports.
"""
