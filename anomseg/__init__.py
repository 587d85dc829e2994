"""anomseg: anomaly segmentation of road scenes — models, scorers, metrics, datasets, synthetic pastes.

This package is the core: no UI, no database, no application code; it imports none of db,
training, workbench or dashboard (docs/ARCHITECTURE.md; tests/test_architecture.py checks it).
"""

__version__ = "0.1.0"
