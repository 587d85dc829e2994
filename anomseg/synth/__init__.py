"""Synthetic anomaly pastes: records, sources, placement, renderer, export.

* ``records``: ``PasteRecord``, the editable, hashable paste (JSON round trip).
* ``sources``: the ObjectSource / BackgroundSource protocols and their registries.
* ``coco`` / ``cityscapes``: the COCO object source and the Cityscapes background source.
* ``geometry``: flip / scale / rotate / feather / anchor maths shared by placement and renderer.
* ``placement``: ``PlacementConfig`` and ``propose`` (records, never pixels).
* ``render``: ``render`` (pure, deterministic), ``Rendered``, ``RenderCache``.
* ``config`` / ``export``: the YAML config and the resumable batch export behind ``anomseg synth``.
"""
