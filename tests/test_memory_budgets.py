"""The app's memory bounds: byte budgets from anomseg.settings, one prediction budget shared by
every loaded model, and an evaluate job that keeps only its probe instead of every output.

Checked against a brute-force sum of ``Prediction.nbytes`` over what the cache really holds.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from anomseg import settings
from anomseg.errors import InputError
from anomseg.models import create_model, save_checkpoint
from workbench.workspace import Workspace

SIZE = (64, 128)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("erfnet"), root / "erfnet.safetensors")
    w = Workspace.open(root / "ws")
    w.register_checkpoint("a", "erfnet", ckpt, input_size=SIZE)
    w.register_checkpoint("b", "erfnet", ckpt, input_size=SIZE)
    bench = root / "bench"
    (bench / "images").mkdir(parents=True)
    (bench / "labels_masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(
            bench / "images" / f"im{i}.png"
        )
        label = np.zeros(SIZE, np.uint8)
        label[20 + i : 40, 30 : 60 + 5 * i] = 1
        Image.fromarray(label).save(bench / "labels_masks" / f"im{i}.png")
    w.register_benchmark("tiny-bench", bench, role="eval")
    yield w
    w.close()


def _held_bytes(cache) -> int:
    """Brute force: what the held predictions measure now."""
    return sum(v.nbytes() for v, _size in list(cache._items.values()))


def test_budgets_come_from_settings(monkeypatch):
    for env in (settings.PREDICTION_CACHE_ENV, settings.MAP_CACHE_ENV):
        monkeypatch.delenv(env, raising=False)
    assert settings.prediction_cache_bytes() == settings.DEFAULT_PREDICTION_CACHE_MB * 2**20
    assert settings.map_cache_bytes() == settings.DEFAULT_MAP_CACHE_MB * 2**20
    monkeypatch.setenv(settings.PREDICTION_CACHE_ENV, "64")
    monkeypatch.setenv(settings.MAP_CACHE_ENV, "0")  # 0 = cache nothing
    assert settings.prediction_cache_bytes() == 64 * 2**20
    assert settings.map_cache_bytes() == 0
    for bad in ("lots", "-1", "1.5"):
        monkeypatch.setenv(settings.MAP_CACHE_ENV, bad)
        with pytest.raises(InputError, match=settings.MAP_CACHE_ENV):
            settings.map_cache_bytes()


def test_services_map_cache_takes_the_settings_budget(ws, monkeypatch):
    from dashboard.services import Services

    monkeypatch.setenv(settings.MAP_CACHE_ENV, "7")
    assert Services(ws).context.maps.max_bytes == 7 * 2**20
    assert Services(ws, map_cache_bytes=123).context.maps.max_bytes == 123  # explicit wins


def test_loaded_models_share_one_prediction_budget(ws, monkeypatch):
    from workbench.models import PredictorPool

    monkeypatch.setenv(settings.PREDICTION_CACHE_ENV, "2")
    pool = PredictorPool(ws.store, max_models=2)
    a, b = pool.get("a"), pool.get("b")
    assert a is not b and a.cache is b.cache is pool.cache
    assert pool.cache.max_bytes == 2 * 2**20
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(3)]
    made = [p.predict(im).nbytes() for p in (a, b) for im in images]
    # private caches of this budget would hold 2 x 2 MB; the shared one never passes 2 MB
    assert sum(made) > pool.cache.max_bytes
    assert 0 < pool.cache.nbytes == _held_bytes(pool.cache) <= pool.cache.max_bytes
    assert len(pool.cache) < len(made)  # older entries evicted across both models
    pool.clear()  # a cold start: no model loaded, nothing cached
    assert len(pool.cache) == 0 == pool.cache.nbytes and pool.get("a") is not a


def test_evaluate_job_keeps_only_its_probe(ws, monkeypatch):
    from db import catalog
    from db import results as dbresults
    from db.models import Job
    from workbench import jobs
    from workbench.worker import Worker

    made = []
    real = jobs.build_predictor

    def spy(spec, device="auto", cache=None):
        made.append(real(spec, device, cache=cache))
        return made[-1]

    monkeypatch.setattr(jobs, "build_predictor", spy)
    one = 20 * SIZE[0] * SIZE[1] * 4  # a 20-class float32 output at SIZE
    monkeypatch.setattr(jobs, "EVAL_CACHE_BYTES", 2 * one + (1 << 16))
    job = jobs.enqueue_evaluate(ws.store, "a")
    assert Worker(ws.store, ws.root, heartbeat_s=60).run_once() == job
    with ws.store.read() as s:
        row = s.get(Job, job)
        assert row.status == "done", row.error
        model_id = catalog.get_model(s, "a").id
        stored = dbresults.leaderboard(s, model_ids=[model_id])
        assert {r["method"] for r in stored} >= {"msp", "maxlogit", "entropy", "energy"}
    (pred,) = made
    assert pred.cache.max_bytes == 2 * one + (1 << 16)
    assert 0 < pred.cache.nbytes == _held_bytes(pred.cache) <= pred.cache.max_bytes
    assert len(pred.cache) <= 2  # 4 images forwarded, at most the probe and one more kept


def _rss() -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_worker_hands_freed_memory_back_after_a_job():
    import threading

    from workbench.worker import return_freed_memory

    keep = []

    def job():  # 192 MB in 64 kB blocks (below the mmap threshold), a few kept: fragmentation
        blocks = [np.ones(8000) for _ in range(3000)]
        keep.extend(blocks[::50])
        blocks.clear()

    t = threading.Thread(target=job)
    t.start()
    t.join()
    before = _rss()
    if not return_freed_memory():
        pytest.skip("no glibc malloc_trim here")
    assert before - _rss() > 100 << 20  # most of the 188 MB freed in the thread's arena
