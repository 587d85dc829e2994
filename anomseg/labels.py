"""The anomaly label coding every reader, metric and training set shares (one place).

Benchmark labels are read into this coding (``anomseg.data.benchmark`` remaps dataset-specific
values such as RoadAnomaly's 2): 0 normal, 1 anomaly, 255 ignored. 255 is also Cityscapes'
ignore trainId (``anomseg.data.classes.IGNORE``).
"""

from __future__ import annotations

NORMAL, ANOMALY, IGNORE = 0, 1, 255
