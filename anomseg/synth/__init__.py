"""Synthetic anomaly pastes: records, sources, placement, renderer, export."""
