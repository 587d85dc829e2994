"""Small things a researcher reads in the app: image order, method names, plurals, hints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


class TinyWorkspace:
    """The part of workbench.workspace.Workspace these checks touch: a store and a cache folder."""

    def __init__(self, root: Path) -> None:
        from db import Store

        self.root = root
        self.cache_dir = root / "cache"
        self.uploads_dir = root / "uploads"
        self.heads_dir = root / "heads"
        for d in (self.cache_dir, self.uploads_dir, self.heads_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(workspace=root)


@pytest.fixture()
def tiny(tmp_path):
    from db import catalog

    ws = TinyWorkspace(tmp_path)
    folder = tmp_path / "data" / "numbered" / "images"
    folder.mkdir(parents=True)
    names = ["10.png", "2.png", "1.png", "0.png", "11.png", "img9.png", "img10.png"]
    for k, n in enumerate(names):
        Image.fromarray(np.full((8, 12, 3), k * 20, np.uint8)).save(folder / n)

    def setup(s):
        ds = catalog.register_dataset(s, "numbered", "eval", folder.parent)
        catalog.register_images(s, ds, [folder / n for n in names])
        return ds.id

    ws.ds_id = ws.store.transact(setup)
    yield ws
    ws.store.close()


def test_gallery_sorts_image_names_naturally(tiny):
    from dashboard.services import Services

    svc = Services(tiny)
    names = [n for n, _i in svc.catalog.image_names(tiny.ds_id)]
    # independent order: by (prefix, number) written out by hand from the file names
    parsed = [(n.rstrip("0123456789.png") or "", int("".join(c for c in n if c.isdigit()))) for n in names]
    assert parsed == sorted(parsed)
    assert names[:5] == ["0.png", "1.png", "2.png", "10.png", "11.png"]
    captions = [c for _p, c in svc.catalog.gallery(tiny.ds_id)]
    assert [c.split(" ", 1)[1] for c in captions] == names


def test_method_labels_are_the_scorer_registry_display_names():
    from anomseg import scoring
    from dashboard.wording import method_label

    for spec in scoring.list_scorers():
        if ":" not in spec.name:
            assert method_label(spec.name) == (spec.label or spec.name)
    assert method_label("entropy") == "MaxEntropy"  # the name Compare's method list shows
    assert method_label("msp:T=2.0") == "MSP (T=2)"
    assert method_label("head:3") == "Head v3"
    assert method_label("not-a-scorer") == "not-a-scorer"


@pytest.mark.parametrize(("n", "text"), [(0, "0 models"), (1, "1 model"), (2, "2 models")])
def test_counts_are_singular_only_for_one(n, text):
    from dashboard.wording import counted

    assert counted(n, "model") == text


def test_header_leaderboard_and_flag_list_use_the_same_names_as_compare(tiny):
    from dashboard.services import Services
    from db import catalog
    from db import results as dbresults

    svc = Services(tiny)

    def setup(s):
        m = catalog.register_model(s, "one", "erfnet", None)
        dbresults.add_eval_result(s, m.id, "entropy", tiny.ds_id, {"auprc": 0.5}, 7)

    tiny.store.transact(setup)
    header = svc.catalog.header_markdown()
    assert "· 1 model ·" in header and "· 1 dataset ·" in header and "· 7 images ·" in header
    assert "· 0 flags ·" in header
    df = svc.leaderboard.leaderboard_frame()
    assert list(df["method"]) == ["MaxEntropy"] and list(df["method id"]) == ["entropy"]
    assert len(svc.leaderboard.leaderboard_frame(method_filter="maxent")) == 1  # the shown name filters too


def _n_jobs(ws) -> int:
    from db.jobs import list_jobs

    with ws.store.read() as s:
        return len(list_jobs(s, limit=100))


def test_generate_and_retrain_without_training_data_say_why_and_how_once(tiny):
    from anomseg.errors import InputError
    from dashboard.services import Services
    from db import catalog

    svc = Services(tiny)
    tiny.store.transact(lambda s: catalog.register_model(s, "real", "erfnet", None) and None)
    with pytest.raises(InputError) as gen:
        svc.curate.queue_generate(4)
    msg = str(gen.value)
    assert msg.count("no synthetic dataset is registered") == 1
    assert "anomseg add-synthetic" in msg and "anomseg add-dataset ROOT --role train" in msg
    with pytest.raises(InputError) as ret:
        svc.retrain.queue_retrain("real")
    msg = str(ret.value)
    assert "no usable training samples" in msg and "anomseg add-dataset ROOT --role train" in msg
    assert _n_jobs(tiny) == 0  # refused before anything was queued


def test_retrain_refusal_keeps_its_reason_but_no_hint_once_training_data_exists(tiny, tmp_path):
    from anomseg.errors import InputError
    from dashboard.services import Services
    from db import catalog

    svc = Services(tiny)

    def setup(s):
        catalog.register_model(s, "real", "erfnet", None)
        catalog.register_dataset(s, "trainset", "train", tmp_path / "data" / "numbered")

    tiny.store.transact(setup)
    with pytest.raises(InputError) as ret:
        svc.retrain.queue_retrain("real")
    assert "no usable training samples" in str(ret.value)
    assert "add-dataset" not in str(ret.value)  # training data exists: flag or accept instead


def test_job_label_shows_an_error_that_repeats_the_message_once():
    from types import SimpleNamespace

    from dashboard.wording import job_label

    same = "no synthetic dataset is registered to add generated samples to"
    st = SimpleNamespace(id=3, status="failed", message=same, error=same)
    assert job_label(st).count(same) == 1
    st = SimpleNamespace(id=3, status="failed", message="step 2/5", error="disk full")
    assert job_label(st) == "job #3 failed: step 2/5 (disk full)"


def test_refusal_html_escapes_and_shows_commands_as_code():
    from dashboard.ui import refusal_html

    out = refusal_html("bad <x> run `anomseg add-dataset ROOT --role train`")
    assert "&lt;x&gt;" in out and "<x>" not in out
    assert "<code>anomseg add-dataset ROOT --role train</code>" in out


def test_worst_image_caption_carries_method_and_score():
    from dashboard.wording import worst_caption

    assert worst_caption("img7.png", "MaxEntropy", "AuPRC", 0.1234) == (
        "AuPRC 12.3 · MaxEntropy · img7.png"
    )
    assert worst_caption("a.png", "MSP", "sIoU", None) == "sIoU n/a · MSP · a.png"


@pytest.mark.realdata
def test_fs_static_gallery_order_is_numeric(fs_static, tmp_path):
    from dashboard.services import Services
    from db import catalog

    ws = TinyWorkspace(tmp_path)
    files = sorted((fs_static / "images").glob("*.jpg"))  # plain sort: 0, 1, 10, 11, ...

    def setup(s):
        ds = catalog.register_dataset(s, "fs_static", "eval", fs_static)
        catalog.register_images(s, ds, files)
        return ds.id

    ds_id = ws.store.transact(setup)
    try:
        names = [n for n, _i in Services(ws).catalog.image_names(ds_id)]
    finally:
        ws.store.close()
    assert names == sorted((p.name for p in files), key=lambda n: int(n.split(".")[0]))
    assert names[:12] == [f"{k}.jpg" for k in range(12)]
