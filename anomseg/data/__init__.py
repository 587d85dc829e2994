"""Benchmark and Cityscapes readers."""

from anomseg.data.benchmark import (
    IMAGE_EXTENSIONS,
    KNOWN_REMAPS,
    LABEL_VALUES,
    BenchmarkDataset,
    PairedDataset,
    PairTensorDataset,
    known_remap,
    resize_pair,
)
from anomseg.data.cityscapes import CityscapesDataset, SegmentationFolder

__all__ = [
    "IMAGE_EXTENSIONS",
    "KNOWN_REMAPS",
    "LABEL_VALUES",
    "BenchmarkDataset",
    "CityscapesDataset",
    "PairTensorDataset",
    "PairedDataset",
    "SegmentationFolder",
    "known_remap",
    "resize_pair",
]
