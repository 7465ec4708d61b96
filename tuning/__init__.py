"""Tuning Studio's core library: training, merging and quantization.

Pure Python on torch/transformers/peft; it imports nothing from the web
side. Importing this package is cheap (no torch): heavy modules are
imported only by the functions that need them.
"""
