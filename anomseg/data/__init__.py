"""Benchmark and Cityscapes readers."""
