"""What the dashboard's tabs do, as plain functions of a workspace: no gradio in this package.

Each tab module (``dashboard/compare.py``, ``flag.py``, ...) is a thin layer of widgets and events
over its own service here, so every action (compare, flag, edit a paste, queue a retrain, read the
leaderboard) is testable without a browser. ``Services`` builds them once per workspace:

* ``catalog``: models, datasets, images, thumbnails, uploads (``catalog.py``);
* ``scores``: method choices, an image as a model sees it, scored maps (``scores.py``);
* ``compare`` / ``components``: the Compare tab's panels, thresholds and component panel;
* ``flags``, ``curate``, ``retrain``, ``leaderboard``: one per tab; ``jobs``: job state.

State lives in the database (``db``); what is kept in memory is a cache with a size bound:

* predictions: the workspace's per-model ``Predictor`` (one forward per image and model);
* scored maps: ``MapCache`` (``context.py``), keyed by (model, image hash, method spec) and
  bounded in bytes, so a slider move re-renders from cached maps and never re-runs the model or
  a scorer;
* loaded heads, decoded images, thumbnails and the per-dataset 95%-TPR thresholds: small LRUs.
"""

from __future__ import annotations

from typing import Any

from dashboard.services.catalog import CatalogService
from dashboard.services.compare import CompareService
from dashboard.services.components import ComponentService
from dashboard.services.context import ServiceContext
from dashboard.services.curate import CurateService
from dashboard.services.flags import FlagService
from dashboard.services.jobs import JobService
from dashboard.services.leaderboard import LeaderboardService
from dashboard.services.retrain import RetrainService
from dashboard.services.scores import ScoreService


class Services:
    """One service per tab over one workspace, wired to what they share (``context``)."""

    def __init__(self, workspace: Any, map_cache_bytes: int | None = None) -> None:
        self.ws = workspace
        self.store = workspace.store
        self.context = ctx = ServiceContext(workspace, map_cache_bytes)
        self.catalog = CatalogService(ctx)
        self.scores = ScoreService(ctx, self.catalog)
        self.compare = CompareService(ctx, self.catalog, self.scores)
        self.components = ComponentService(ctx, self.catalog, self.scores)
        self.flags = FlagService(ctx, self.catalog, self.scores)
        self.curate = CurateService(ctx)
        self.jobs = JobService(ctx)
        self.retrain = RetrainService(ctx)
        self.leaderboard = LeaderboardService(ctx, self.catalog, self.scores)
