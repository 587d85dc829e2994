"""anomseg: anomaly segmentation of road scenes — models, scorers, metrics, datasets, synthetic pastes.

This package holds no UI and no database code (see DESIGN: anomseg <- db <- training <- dashboard).
"""

__version__ = "0.1.0"
