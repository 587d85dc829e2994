"""The dashboard's services (no gradio) against a real store and a small real model.

The workspace here is a minimal stand-in with the attributes the services read (``store``,
``root``, ``cache_dir``, ``uploads_dir``, ``predictor(name)``); images are procedural scenes at
64x128 with bank objects pasted by the real paste engine, so ground truth is exact.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomseg.errors import InputError

SIZE = (64, 128)


class MiniWorkspace:
    """The surface of workbench.workspace.Workspace the dashboard uses, over a temp folder."""

    def __init__(self, root: Path) -> None:
        from db import Store

        self.root = root
        self.cache_dir = root / "cache"
        self.uploads_dir = root / "uploads"
        self.heads_dir = root / "heads"
        for d in (self.cache_dir, self.uploads_dir, self.heads_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.store = Store.open(workspace=root)
        self.demo_size = SIZE
        self._predictors: dict = {}
        self._lock = threading.Lock()

    def predictor(self, name: str):
        from anomseg.models import create_model
        from anomseg.predict import Predictor

        with self._lock:
            if name not in self._predictors:
                model = create_model("erfnet", checkpoint=self.root / "tiny-erfnet.safetensors")
                self._predictors[name] = Predictor(model, device="cpu", input_size=SIZE)
            return self._predictors[name]


def _scene_with_pastes(seed: int, n: int = 2):
    from anomseg.synth.placement import PlacementConfig, propose
    from anomseg.synth.render import render
    from anomseg.world.objects import ObjectBank
    from anomseg.world.scenes import generate_scene

    bg = generate_scene(seed, SIZE)
    bank = ObjectBank()
    cfg = PlacementConfig(height_bottom=0.4, area_ratio=(0.002, 0.3))
    recs, _why = propose(bg, bank, n, cfg, seed=seed)
    return bg, recs, render(bg, recs, {"bank": bank})


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from anomseg.models.heads import create_head, save_head
    from db import catalog, pastes
    from db import heads as dbheads
    from db import results as dbresults

    root = tmp_path_factory.mktemp("ws")
    w = MiniWorkspace(root)
    bench = root / "data" / "mini-eval"
    (bench / "images").mkdir(parents=True)
    (bench / "labels_masks").mkdir()
    synth_records = {}
    for i, seed in enumerate((11, 12, 13)):
        bg, recs, r = _scene_with_pastes(seed)
        assert recs, "the placement should find room on a procedural road"
        Image.fromarray(r.rgb).save(bench / "images" / f"img{i}.png")
        Image.fromarray(r.gt).save(bench / "labels_masks" / f"img{i}.png")
        synth_records[bg.id] = recs
    train = root / "data" / "mini-train"
    (train / "images").mkdir(parents=True)
    Image.fromarray(_scene_with_pastes(21)[0].rgb).save(train / "images" / "t0.png")

    import torch

    from anomseg.models import create_model, save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("erfnet"), root / "tiny-erfnet.safetensors")

    def setup(s):
        m = catalog.register_model(s, "tiny-erfnet", "erfnet", ckpt, input_size=SIZE)
        ev = catalog.register_dataset(s, "mini-eval", "eval", bench)
        catalog.register_images(s, ev, sorted((bench / "images").glob("*.png")))
        tr = catalog.register_dataset(s, "mini-train", "train", train)
        catalog.register_images(s, tr, [train / "images" / "t0.png"])
        syn = catalog.register_dataset(s, "mini-synth", "synthetic", root / "data")
        for bid, recs in synth_records.items():
            pastes.create_sample(s, syn.id, bid, {f"p{k}": r.to_dict() for k, r in enumerate(recs)})
        head = create_head("stats")
        sha = save_head(head, w.heads_dir / "v1.safetensors", model="tiny-erfnet", version=1)
        hv = dbheads.create_head_version(s, m.id, "stats", hparams={"epochs": 1})
        dbheads.finish_head_version(
            s, hv.id, checkpoint_path=str(w.heads_dir / "v1.safetensors"), checkpoint_sha256=sha
        )
        dbheads.activate_head(s, hv.id)
        per = [{"name": f"img{i}", "auprc": a} for i, a in enumerate((0.5, 0.1, 0.9))]
        dbresults.add_eval_result(
            s, m.id, "msp", ev.id, {"auprc": 0.4, "fpr95": 0.3, "auroc": 0.8}, 3, per_image=per
        )
        dbresults.add_eval_result(
            s, m.id, "head:1", ev.id, {"auprc": 0.6, "fpr95": 0.2, "auroc": 0.9}, 3
        )
        return ev.id, tr.id

    w.eval_id, w.train_id = w.store.transact(setup)
    yield w
    w.store.close()


@pytest.fixture(scope="module")
def svc(ws):
    from dashboard.services import Services

    return Services(ws)


def _image_ids(svc, ds_id):
    return [i for _n, i in svc.catalog.image_names(ds_id)]


# ----------------------------------------------------------------------------- pure helpers


def test_threshold_at_tpr_matches_a_brute_force_search():
    from dashboard.services.compare import threshold_at_tpr

    rng = np.random.default_rng(1)
    pos = rng.normal(size=997).astype(np.float32)
    t = threshold_at_tpr(pos, 0.95)
    # brute force: the largest candidate value keeping >= 95% of positives at or above it
    best = max(v for v in np.unique(pos) if (pos >= v).mean() >= 0.95)
    assert t == best
    assert (pos >= t).mean() >= 0.95 and (pos > t).mean() < 0.95


def test_editor_mask_thresholds_antialiased_alpha_and_refuses_empty():
    from dashboard.services.flags import editor_mask

    layer = np.zeros((4, 6, 4), np.uint8)
    layer[1, 1, 3] = 255
    layer[1, 2, 3] = 128  # half covered by the brush rim: counts
    layer[1, 3, 3] = 127  # less than half: does not
    m = editor_mask({"background": None, "layers": [layer], "composite": None})
    assert m.sum() == 2 and m[1, 1] and m[1, 2] and not m[1, 3]
    with pytest.raises(InputError, match="empty"):
        editor_mask({"background": None, "layers": [np.zeros((4, 6, 4), np.uint8)]})
    with pytest.raises(InputError, match="empty"):
        editor_mask({"background": None, "layers": []})
    with pytest.raises(InputError):
        editor_mask(None)


def test_mask_maps_back_to_full_size_exactly_for_integer_scales():
    from dashboard.services.flags import mask_to_full_size

    small = np.zeros((512, 1024), bool)
    small[100:200, 300:400] = True
    full = mask_to_full_size(small, (1024, 2048))
    assert full.shape == (1024, 2048)
    expected = np.zeros((1024, 2048), bool)
    expected[200:400, 600:800] = True
    assert np.array_equal(full, expected)


def test_lru_is_bounded_in_bytes():
    from dashboard.services.context import MapCache

    c = MapCache(max_bytes=10_000)
    for i in range(10):
        c.put(i, np.zeros(1000, np.float32))  # ~4 KB each
    assert c.nbytes <= 10_000 and len(c) == 2
    assert c.get(9) is not None and c.get(0) is None


# ----------------------------------------------------------------------------- compare


def test_compare_shows_every_method_with_metrics_that_match_sklearn(svc, ws):
    from sklearn.metrics import average_precision_score

    from anomseg import scoring

    image_id = _image_ids(svc, ws.eval_id)[0]
    names = svc.scores.default_methods("tiny-erfnet")
    # every post-hoc scorer for pixel models plus the head version
    assert {"msp", "maxlogit", "entropy", "energy", "head:1"} <= set(names)
    assert "rba" not in names  # mask models only
    res = svc.compare.compare("tiny-erfnet", image_id, names)
    assert [p.spec for p in res.panels] == names
    assert all(p.image.dtype == np.uint8 and p.image.shape[2] == 3 for p in res.panels)
    # independent check: score the model's prediction ourselves and compare AuPRC with sklearn
    view = svc.scores.load_view("tiny-erfnet", image_id)
    from anomseg.imageio import read_image

    _img, _ds, path = svc.catalog.image_paths(image_id)
    pred = ws.predictor("tiny-erfnet").predict(read_image(path))
    amap = scoring.score("maxlogit", pred)
    valid = view.gt_score != 255
    ref = average_precision_score((view.gt_score[valid] == 1).astype(int), amap[valid])
    panel = next(p for p in res.panels if p.spec == "maxlogit")
    assert panel.auprc == pytest.approx(ref, abs=1e-6)
    assert "AuPRC" in panel.caption


def test_slider_moves_never_rerun_the_model_or_scorers(svc, ws):
    from dashboard.services.compare import CompareStyle

    image_id = _image_ids(svc, ws.eval_id)[1]
    names = svc.scores.default_methods("tiny-erfnet")
    pred = ws.predictor("tiny-erfnet")
    svc.compare.compare("tiny-erfnet", image_id, names)
    forwards, maps_before = pred.forward_calls, len(svc.context.maps)
    for op in (0.1, 0.5, 0.9):
        for mode in ("off", "score value"):
            svc.compare.compare(
                "tiny-erfnet",
                image_id,
                names,
                None,
                CompareStyle(opacity=op, threshold_mode=mode, shared_scale=True),
            )
    assert pred.forward_calls == forwards
    # re-rendering only adds down-scaled copies for the grid, never a new full map
    full_maps = [k for k in list(svc.context.maps._items) if k[0] != "grid"]
    assert len(full_maps) <= maps_before


def test_opacity_changes_the_pixels_and_shared_scale_unifies_ranges(svc, ws):
    from dashboard.services.compare import CompareStyle

    image_id = _image_ids(svc, ws.eval_id)[0]
    names = ["msp", "energy"]
    a = svc.compare.compare("tiny-erfnet", image_id, names, None, CompareStyle(opacity=0.0, show_gt=False))
    b = svc.compare.compare("tiny-erfnet", image_id, names, None, CompareStyle(opacity=1.0, show_gt=False))
    view = svc.scores.load_view("tiny-erfnet", image_id)
    from dashboard import render

    small = render.resize_rgb(view.rgb, a.panels[0].image.shape[:2])
    # opacity 0 = the grey copy of the image the heat colours are drawn over
    luma = small.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(a.panels[0].image[..., 0].astype(int) - np.rint(luma)).max() <= 1
    assert not np.array_equal(b.panels[0].image, a.panels[0].image)
    # a shared scale joins methods in the same units only: maxlogit and energy (logit units)
    # share the span of their two ranges, msp (a probability) keeps its own
    three = ["msp", "maxlogit", "energy"]
    own = svc.compare.compare("tiny-erfnet", image_id, three, None, CompareStyle())
    s = svc.compare.compare("tiny-erfnet", image_id, three, None, CompareStyle(shared_scale=True))
    by = {p.name: p for p in s.panels}
    mine = {p.name: p for p in own.panels}
    assert (by["msp"].vmin, by["msp"].vmax) == (mine["msp"].vmin, mine["msp"].vmax)
    lo = min(mine["maxlogit"].vmin, mine["energy"].vmin)
    hi = max(mine["maxlogit"].vmax, mine["energy"].vmax)
    assert (by["maxlogit"].vmin, by["maxlogit"].vmax) == (lo, hi)
    assert (by["energy"].vmin, by["energy"].vmax) == (lo, hi)
    # each own range is the median .. 99.5th percentile of the map (numpy's percentiles)
    _, m = svc.scores.score_maps("tiny-erfnet", view, ["msp"])["msp"]
    valid = m if view.gt_score is None else m[view.gt_score != 255]
    exp = np.percentile(valid[:: max(1, valid.size // 65536)], [50, 99.5])
    assert (mine["msp"].vmin, mine["msp"].vmax) == pytest.approx(tuple(exp), rel=1e-5)


def test_tpr_threshold_keeps_95_percent_of_the_dataset_anomaly_pixels(svc, ws):
    from dashboard.services.compare import CompareStyle

    ids = _image_ids(svc, ws.eval_id)
    res = svc.compare.compare(
        "tiny-erfnet",
        ids[0],
        ["maxlogit"],
        None,
        CompareStyle(threshold_mode="95% TPR on dataset", dataset_id=ws.eval_id),
    )
    thr = res.panels[0].threshold
    pos = []
    for i in ids:
        v = svc.scores.load_view("tiny-erfnet", i)
        _, m = svc.scores.score_maps("tiny-erfnet", v, ["maxlogit"])["maxlogit"]
        pos.append(m[v.gt_score == 1])
    pos = np.concatenate(pos)
    assert (pos >= thr).mean() >= 0.95
    assert (pos > thr).mean() < 0.95  # and it is the highest such threshold


def test_tpr_thresholds_of_all_methods_take_one_forward_per_image(ws):
    """With no prediction cache at all, 3 methods' dataset thresholds cost one forward per
    image (not one per image and method), and equal a brute-force per-method computation."""
    from anomseg.models import create_model
    from anomseg.predict import Predictor
    from dashboard.services import Services
    from dashboard.services.compare import CompareStyle, threshold_at_tpr

    model = create_model("erfnet", checkpoint=ws.root / "tiny-erfnet.safetensors")
    cold = Predictor(model, device="cpu", input_size=SIZE, cache_bytes=0)

    class _Cold:
        root, store, cache_dir, uploads_dir = ws.root, ws.store, ws.cache_dir, ws.uploads_dir

        def predictor(self, name):
            return cold

    svc = Services(_Cold(), map_cache_bytes=0)  # no scored map survives either
    ids = _image_ids(svc, ws.eval_id)
    names = ["msp", "maxlogit", "energy"]
    before = cold.forward_calls
    res = svc.compare.compare(
        "tiny-erfnet",
        ids[0],
        names,
        None,
        CompareStyle(threshold_mode="95% TPR on dataset", dataset_id=ws.eval_id),
    )
    # one pass over the dataset + the compared image itself
    assert cold.forward_calls - before == len(ids) + 1
    for panel in res.panels:
        pos = []
        for i in ids:
            v = svc.scores.load_view("tiny-erfnet", i)
            if v.gt_score is not None and (v.gt_score == 1).any():
                _, m = svc.scores.score_maps("tiny-erfnet", v, [panel.name])[panel.name]
                pos.append(m[v.gt_score == 1])
        assert panel.threshold == threshold_at_tpr(np.concatenate(pos))


def test_tpr_threshold_on_a_dataset_without_labels_is_a_clear_note(svc, ws):
    from dashboard.services.compare import CompareStyle

    image_id = _image_ids(svc, ws.train_id)[0]
    res = svc.compare.compare(
        "tiny-erfnet", image_id, ["msp"], None, CompareStyle(threshold_mode="95% TPR on dataset")
    )
    assert res.panels[0].threshold is None
    assert any("no ground-truth anomaly pixels" in n for n in res.notes)
    assert res.panels[0].auprc is None


def test_unknown_method_and_empty_selection_are_refused(svc, ws):
    image_id = _image_ids(svc, ws.eval_id)[0]
    with pytest.raises(InputError, match="not available"):
        svc.compare.compare("tiny-erfnet", image_id, ["rba"])
    with pytest.raises(InputError, match="no method selected"):
        svc.compare.compare("tiny-erfnet", image_id, [])


def test_method_parameters_change_the_map(svc, ws):
    image_id = _image_ids(svc, ws.eval_id)[0]
    view = svc.scores.load_view("tiny-erfnet", image_id)
    m1 = svc.scores.score_maps("tiny-erfnet", view, ["msp"], {"msp": {"T": 1.0}})["msp"]
    m2 = svc.scores.score_maps("tiny-erfnet", view, ["msp"], {"msp": {"T": 3.0}})["msp"]
    assert m1[0] == "msp" and m2[0] == "msp:T=3.0"
    assert not np.allclose(m1[1], m2[1])


# ----------------------------------------------------------------------------- uploads


def test_upload_is_stored_under_its_hash_and_registered(svc, ws, tmp_path):
    p = tmp_path / "../../evil name.png"
    p = tmp_path / "evil name.png"
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(p)
    image_id = svc.catalog.register_upload(p)
    _img, ds, path = svc.catalog.image_paths(image_id)
    uploads = Path(ws.uploads_dir).resolve()
    assert ds.name == "uploads" and path.parent.parent.resolve() == uploads
    # the user's own file name is kept (sanitised), in a folder named by the pixels' hash
    assert path.name == "evil_name.png" and svc.catalog.image_names(ds.id)[0][0] == "evil_name.png"
    res = svc.compare.compare("tiny-erfnet", image_id, ["msp"])
    assert res.panels[0].auprc is None  # no ground truth for an upload


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"this is not an image", "not a readable image"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "truncated|corrupt|cannot read"),
    ],
)
def test_bad_uploads_are_refused_with_a_reason_and_nothing_is_stored(
    svc, ws, tmp_path, content, expect
):
    p = tmp_path / "upload.png"
    p.write_bytes(content)
    before = sorted(Path(ws.uploads_dir).iterdir())
    with pytest.raises(InputError, match=expect):
        svc.catalog.register_upload(p)
    assert sorted(Path(ws.uploads_dir).iterdir()) == before


def test_huge_upload_is_refused(svc, tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(p)
    with pytest.raises(InputError, match="pixels"):
        svc.catalog.register_upload(p, max_pixels=1_000_000)


# ----------------------------------------------------------------------------- flags


def test_flag_painted_on_a_downscaled_canvas_lands_full_size_in_the_store(svc, ws):
    from db import flags as dbflags

    image_id = _image_ids(svc, ws.train_id)[0]
    canvas = svc.flags.flag_canvas("tiny-erfnet", image_id, "msp")
    bg = canvas["background"]
    assert bg.shape[:2] == (64, 128)
    layer = np.zeros((*bg.shape[:2], 4), np.uint8)
    layer[10:20, 30:50, 3] = 255
    fid = svc.flags.save_flag(
        "tiny-erfnet",
        image_id,
        "msp",
        None,
        "false positive",
        {"background": bg, "layers": [layer]},
        "a shadow",
        "ann",
    )
    with ws.store.read() as s:
        f = dbflags.get_flag(s, fid)
        mask = f.decoded_mask()
        assert (f.kind, f.method, f.author, f.note) == ("false_positive", "msp", "ann", "a shadow")
    assert mask.sum() == 200 and mask[10:20, 30:50].all()
    df = svc.flags.flags_frame(image_id)
    assert int(df.iloc[0]["id"]) == fid
    assert df.iloc[0]["method"] == "MSP"  # the name Compare shows, not the stored "msp"
    svc.flags.update_flag(fid, note="edited", kind="ignore")
    with ws.store.read() as s:
        assert dbflags.get_flag(s, fid).note == "edited"
    svc.flags.delete_flag(fid)
    assert fid not in set(svc.flags.flags_frame(image_id)["id"])


def test_empty_flag_is_refused_and_nothing_is_stored(svc, ws):
    image_id = _image_ids(svc, ws.train_id)[0]
    before = svc.flags.count_flags()
    canvas = svc.flags.flag_canvas("tiny-erfnet", image_id, "msp")
    with pytest.raises(InputError, match="empty"):
        svc.flags.save_flag("tiny-erfnet", image_id, "msp", None, "false positive", canvas, "", "x")
    assert svc.flags.count_flags() == before


def test_concurrent_flags_from_many_threads_are_all_stored(svc, ws):
    image_id = _image_ids(svc, ws.train_id)[0]
    before = svc.flags.count_flags()
    layer = np.zeros((64, 128, 4), np.uint8)
    layer[5:9, 5:9, 3] = 255
    errors = []

    def one(k):
        try:
            svc.flags.save_flag(
                "tiny-erfnet",
                image_id,
                "msp",
                None,
                "false negative",
                {"layers": [layer]},
                f"t{k}",
                f"user{k}",
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert svc.flags.count_flags() == before + 12


# ----------------------------------------------------------------------------- curate


def _first_sample(svc):
    df = svc.curate.samples_frame()
    return int(df.iloc[0]["id"])


def test_sample_view_renders_the_current_records(svc):
    sid = _first_sample(svc)
    img, df, keys = svc.curate.sample_view(sid, "p0")
    assert img.shape == (64, 128, 3) and keys == list(df["key"])
    # the selected paste is outlined in yellow
    assert ((img == (255, 220, 0)).all(axis=2)).any()


def test_editing_a_paste_adds_a_revision_and_changes_the_render(svc):
    sid = _first_sample(svc)
    before_img = svc.curate.render_sample(sid).rgb.copy()
    rec = svc.curate.paste_record(sid, "p0")
    n0 = svc.curate.paste_revisions(sid, "p0")
    rev = svc.curate.edit_paste(sid, "p0", {"flip": not rec["flip"]}, "ann")
    assert rev == n0 + 1 and svc.curate.paste_revisions(sid, "p0") == n0 + 1
    assert svc.curate.paste_record(sid, "p0")["flip"] is (not rec["flip"])
    assert not np.array_equal(svc.curate.render_sample(sid).rgb, before_img)
    # undo brings the old record and the old picture back; the revision stays stored
    svc.curate.undo_paste(sid, "p0")
    assert svc.curate.paste_record(sid, "p0") == rec
    assert np.array_equal(svc.curate.render_sample(sid).rgb, before_img)
    assert svc.curate.paste_revisions(sid, "p0") == n0 + 1


def test_moving_a_paste_off_the_road_is_refused_and_nothing_is_stored(svc):
    sid = _first_sample(svc)
    rec = svc.curate.paste_record(sid, "p0")
    n0 = svc.curate.paste_revisions(sid, "p0")
    from anomseg.synth.geometry import transform_mask
    from anomseg.world.objects import make_object

    h = transform_mask(
        make_object(rec["object_id"]), rec["scale"], rec["flip"], rec["rotation"]
    ).shape[0]
    with pytest.raises(InputError, match="off the road"):
        svc.curate.move_paste(sid, "p0", 64, h + 1, "ann")  # standing on the top rows: sky / buildings
    with pytest.raises(InputError, match="off the image"):
        svc.curate.move_paste(sid, "p0", 127, 63, "ann")
    assert svc.curate.paste_revisions(sid, "p0") == n0 and svc.curate.paste_record(sid, "p0") == rec


def test_sample_status_and_generate_job(svc, ws):
    from db.jobs import get_job

    sid = _first_sample(svc)
    svc.curate.set_sample_status(sid, "accepted")
    assert svc.curate.samples_frame("accepted")["id"].tolist() == [sid]
    assert svc.curate.sample_counts()["accepted"] == 1
    job = svc.curate.queue_generate(4)
    with ws.store.read() as s:
        j = get_job(s, job)
        assert (j.kind, j.params["n"], j.status) == ("synth_generate", 4, "queued")
    with pytest.raises(InputError, match="1..500"):
        svc.curate.queue_generate(0)


# ----------------------------------------------------------------------------- retrain, leaderboard


def test_training_summary_counts_what_trains(svc):
    md = svc.retrain.training_summary("tiny-erfnet")
    assert "accepted synthetic samples | **" in md and "false-positive flags" in md


def test_retrain_request_is_queued_with_its_hyper_parameters(svc, ws):
    job = svc.retrain.queue_retrain(
        "tiny-erfnet", "stats", epochs=2, lr=0.01, fp_weight=3.0, activate="never"
    )
    st = svc.jobs.job_state(job)
    assert st.status == "queued" and st.kind == "train_head" and not st.finished
    with ws.store.read() as s:
        from db.jobs import get_job

        p = get_job(s, job).params
    assert (p["epochs"], p["lr"], p["fp_weight"], p["activate"]) == (2, 0.01, 3.0, "never")
    assert svc.jobs.latest_job(("train_head",), running_only=True) == job
    svc.jobs.cancel_job(job)
    assert svc.jobs.job_state(job).status == "cancelled"


def test_head_history_activation_and_rollback_guard(svc):
    df = svc.retrain.head_history("tiny-erfnet")
    assert df.iloc[0]["version"] == 1 and df.iloc[0]["active"] == "●"
    assert df.iloc[0]["AuPRC % mini-eval"] == 60.0
    with pytest.raises(InputError, match="no parent"):
        svc.retrain.rollback_head("tiny-erfnet")


def test_leaderboard_filters_and_worst_images(svc, ws):
    df = svc.leaderboard.leaderboard_frame()
    assert set(df["method id"]) == {"msp", "head:1"}
    assert df.iloc[0]["method id"] == "head:1"  # sorted by AuPRC within the dataset
    assert df[df["method id"] == "msp"]["AuPRC"].item() == 40.0
    assert len(svc.leaderboard.leaderboard_frame(method_filter="head")) == 1
    rid = int(df[df["method id"] == "msp"]["result"].item())
    worst = svc.leaderboard.worst_images(rid, k=2)
    assert [n for _i, n, _a in worst] == ["img1", "img0"]
    names = {i: n for n, i in svc.catalog.image_names(ws.eval_id)}
    assert [names[i] for i, _n, _a in worst] == ["img1.png", "img0.png"]


def test_pr_curves_end_at_full_recall(svc, ws):
    from sklearn.metrics import average_precision_score, precision_recall_curve

    curves = svc.leaderboard.pr_curves("tiny-erfnet", ws.eval_id, ["msp", "head:1"])
    assert len(curves) == 2
    for (label, recall, precision), name in zip(curves, ["msp", "head:1"], strict=True):
        assert recall[-1] == pytest.approx(1.0) and 0 <= precision.min() <= precision.max() <= 1
        scores, labels = [], []
        for _n, image_id in svc.catalog.image_names(ws.eval_id):
            v = svc.scores.load_view("tiny-erfnet", image_id)
            _, m = svc.scores.score_maps("tiny-erfnet", v, [name])[name]
            keep = v.gt_score != 255
            scores.append(m[keep])
            labels.append(v.gt_score[keep] == 1)
        y, sc = np.concatenate(labels), np.concatenate(scores)
        ap = average_precision_score(y, sc)
        assert f"AP {100 * ap:.1f}" in label
        # the plotted points lie on sklearn's curve: same precision at the same recall
        p_ref, r_ref, _ = precision_recall_curve(y, sc)
        for r, p in list(zip(recall, precision, strict=True))[1::25]:
            assert p == pytest.approx(np.interp(r, r_ref[::-1], p_ref[::-1]), abs=0.02)


# ----------------------------------------------------------------------------- render cache, jobs


def test_paste_edit_writes_the_render_cache_training_reads(svc, ws):
    from anomseg.imageio import read_label
    from db import pastes as dbpastes
    from training.dataset import revisions_hash

    sid = int(svc.curate.samples_frame().iloc[1]["id"])
    rec = svc.curate.paste_record(sid, "p0")
    svc.curate.edit_paste(sid, "p0", {"feather": 0.0 if rec["feather"] else 1.0}, "ann")
    with ws.store.read() as s:
        smp = dbpastes.get_sample(s, sid)
        revs = {p.key: r.content_hash for p, r in dbpastes.current_revisions(s, sid)}
        cache = smp.render
    assert cache["revisions_hash"] == revisions_hash(revs)
    assert np.array_equal(read_label(cache["gt"]), svc.curate.render_sample(sid).gt)


def _run_one_job(ws):
    from workbench.worker import Worker

    worker = Worker(ws.store, ws.root, heartbeat_s=60)
    job = worker.run_once()
    assert job is not None
    return job


def _drain_queue(ws):
    from db.jobs import cancel_job, list_jobs

    def cancel_all(s):
        for j in list_jobs(s, status="queued"):
            cancel_job(s, j.id)

    ws.store.transact(cancel_all)


def test_evaluate_job_writes_results_equal_to_sklearn(svc, ws):
    from sklearn.metrics import average_precision_score

    from db import catalog
    from db.jobs import enqueue_job, get_job

    _drain_queue(ws)
    job = ws.store.transact(
        lambda s: enqueue_job(s, "evaluate", {"model": "tiny-erfnet", "methods": ["maxlogit"]}).id
    )
    assert _run_one_job(ws) == job
    with ws.store.read() as s:
        j = get_job(s, job)
        assert j.status == "done", j.error
        ev = catalog.get_dataset(s, "mini-eval").id
    df = svc.leaderboard.leaderboard_frame(datasets=["mini-eval"])
    row = df[df["method id"] == "maxlogit"]
    assert len(row) == 1 and int(row["images"].item()) == 3
    scores, labels = [], []
    for _n, image_id in svc.catalog.image_names(ev):
        v = svc.scores.load_view("tiny-erfnet", image_id)
        _, m = svc.scores.score_maps("tiny-erfnet", v, ["maxlogit"])["maxlogit"]
        keep = v.gt_score != 255
        scores.append(m[keep])
        labels.append(v.gt_score[keep] == 1)
    ref = average_precision_score(np.concatenate(labels), np.concatenate(scores))
    assert row["AuPRC"].item() == pytest.approx(100 * ref, abs=0.01)
    # the head version was evaluated too, with per-image figures for the drill-down
    assert "head:1" in set(df["method id"])
    rid = int(row["result"].item())
    assert len(svc.leaderboard.worst_images(rid, k=5)) == 3


def test_generate_job_proposes_new_samples_on_the_ground(svc, ws):
    from anomseg.synth.records import PasteRecord
    from db import pastes as dbpastes

    _drain_queue(ws)
    for sid in svc.curate.samples_frame()["id"]:
        svc.curate.refresh_render_cache(int(sid))  # tells the generator the scene size
    before = set(svc.curate.samples_frame()["id"])
    job = svc.curate.queue_generate(2)
    assert _run_one_job(ws) == job
    st = svc.jobs.job_state(job)
    assert st.status == "done", st.error
    new = set(svc.curate.samples_frame()["id"]) - before
    assert len(new) == 2
    for sid in new:
        with ws.store.read() as s:
            smp = dbpastes.get_sample(s, int(sid))
            assert smp.status == "proposed" and Path(smp.render["image"]).is_file()
            recs = [
                PasteRecord.from_dict(r) for r in dbpastes.current_records(s, int(sid)).values()
            ]
        assert recs
        bg = svc.curate._background(int(sid))
        assert bg.rgb.shape[:2] == SIZE
        for r in recs:
            svc.curate.check_placement(bg, r)


def test_worst_images_of_a_result_without_per_image_figures_say_so_and_score_nothing(svc, ws):
    """The drill-down reads stored per-image values only: a result stored without them (an old
    row) is refused with what to do, and no image is scored to make them up."""
    from db import catalog
    from db import results as dbresults

    def add(s):
        m = catalog.get_model(s, "tiny-erfnet")
        return dbresults.add_eval_result(s, m.id, "head:1", ws.eval_id, {"auprc": 0.5}, 3).id

    rid = ws.store.transact(add)  # a result stored without per-image figures
    forwards, maps = svc.scores.forward_count, len(svc.context.maps)
    for key in ("auprc", "siou"):
        with pytest.raises(
            InputError,
            match=rf"no per-image values stored for Head v1 on mini-eval \(result #{rid}\): "
            "evaluate it again",
        ):
            svc.leaderboard.worst_images(rid, k=3, key=key)
    assert (svc.scores.forward_count, len(svc.context.maps)) == (forwards, maps)


def test_head_rows_show_recipe_and_geometry(svc, ws):
    """A head version's recipe and geometry (hparams) show in its leaderboard rows and history;
    versions stored before these choices existed read as what they were: default, stitched."""
    from db import catalog
    from db import heads as dbheads

    df = svc.leaderboard.leaderboard_frame()
    setup = dict(zip(df["method id"], df["head setup"], strict=True))
    # post-hoc rows (msp, and any an earlier test of this module recorded) carry no head setup
    assert setup["head:1"] == "default · stitched" and setup["msp"] == ""
    assert all(v == "" for m, v in setup.items() if not m.startswith("head:"))

    def set_hparams(s, hp):
        m = catalog.get_model(s, "tiny-erfnet")
        dbheads.list_head_versions(s, m.id)[0].hparams = hp

    ws.store.transact(lambda s: set_hparams(s, {"epochs": 1, "recipe": "seed",
                                                "head_geometry": "window"}))  # fmt: skip
    try:
        df = svc.leaderboard.leaderboard_frame()
        assert df[df["method id"] == "head:1"]["head setup"].item() == "seed · window"
        hist = svc.retrain.head_history("tiny-erfnet")
        assert (hist.iloc[0]["recipe"], hist.iloc[0]["geometry"]) == ("seed", "window")
    finally:
        ws.store.transact(lambda s: set_hparams(s, {"epochs": 1}))
