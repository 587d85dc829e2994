"""The real-data recipe: one run from ``../shared`` to the table of post-hoc vs learned methods.

``run_real_recipe(shared, out, budget)`` builds ``out/workspace`` (the shared ERFNet registered,
RoadAnomaly21 and fs_static as eval sets, CamVid x COCO pastes accepted as training samples),
trains the stats head, the feature head (on ERFNet's encoder output) and outlier exposure (kind
``oe``), evaluates the post-hoc methods and every learned kind on both eval sets from one forward
per image, and writes ``out/results.json`` and ``out/heads/<kind>.safetensors``.

Resumable: each finished step is recorded in ``out/state.json`` (written atomically) with what
it made, and a re-run skips it; samples are counted in the store, so an interrupted generation
adds only the missing ones. The encoder runs once per training image whatever the number of
learned kinds: they all read the workspace's feature cache.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from anomseg.atomic import atomic_paths, atomic_write
from anomseg.errors import InputError

MODEL_NAME = "erfnet"
EVAL_SETS = ("RoadAnomaly21", "fs_static")
COCO_FILES = (("mini_a", "train2017"), ("mini_b", "train2017"), ("mini_a", "val2017"),
              ("mini_b", "val2017"))  # fmt: skip
POSTHOC = ("msp", "maxlogit", "entropy", "energy")
# paste placements (PlacementConfig fields): "large" = objects up to 60 % of the image height
# near the bottom, up to 30 % of its area, every paste lightness-matched, 3 px feathered rim
PASTES: dict[str, dict[str, Any]] = {
    "default": {},
    "large": {"height_top": 0.05, "height_bottom": 0.6, "area_ratio": [0.0005, 0.3],
              "photometric_prob": 1.0, "feather": 3.0},
}  # fmt: skip
# outlier exposure as the recipe runs it (OEConfig fields; Budget.oe overrides them): the whole
# decoder, 128x256 crops, two epochs, the energy-margin term, read by energy. The setting that beat
# Energy on RoadAnomaly21 over seeds and training sets; README "Real data" has the sweep.
OE_RECIPE: dict[str, Any] = {"stage": "decoder", "crop": [128, 256], "epochs": 2,
                             "energy_weight": 0.1, "score": "energy"}  # fmt: skip
Say = Callable[[str], None]


@dataclass
class Budget:
    """How much the recipe does (the defaults are the README run)."""

    samples: int = 192  # CamVid x COCO samples, spread over the four COCO files
    instances: tuple[int, int] = (1, 3)
    placement: dict[str, Any] = field(default_factory=lambda: dict(PASTES["large"]))
    head_epochs: int = 1  # 5 epochs of 48 samples took the feature head 16 min under load
    oe: dict[str, Any] = field(default_factory=dict)  # OEConfig fields over OE_RECIPE
    input_size: tuple[int, int] = (512, 1024)
    eval_limit: int | None = None  # first N images of each eval set (CI)
    seed: int = 0

    def __post_init__(self) -> None:
        # the full setting, so state.json records it and a changed OE_RECIPE is another budget
        self.oe = {**OE_RECIPE, **self.oe}
        from training.outlier_exposure import OEConfig

        OEConfig(**self.oe)  # a bad option is refused here, before anything is written

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        d = asdict(self)
        d["instances"], d["input_size"] = list(self.instances), list(self.input_size)
        return d


def _atomic_json(path: Path, doc: Any) -> None:
    atomic_write(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


class State:
    """``out/state.json``: finished steps and what they made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.doc.setdefault("steps", {})

    def done(self, step: str) -> dict[str, Any] | None:
        """The record of a finished step, or None."""
        return self.doc["steps"].get(step)

    def finish(self, step: str, **record: Any) -> None:
        """Record a finished step (atomically)."""
        self.doc["steps"][step] = record
        _atomic_json(self.path, self.doc)


def check_shared(shared: Path) -> dict[str, Path]:
    """Every input the recipe reads; one clear error naming the first missing one."""
    paths = {
        "checkpoint": shared / "models" / "erfnet_cityscapes.pth",
        "camvid": shared / "data" / "camvid",
        **{f"eval:{n}": shared / "data" / "anomaly_val" / n for n in EVAL_SETS},
        **{f"coco:{a}/{s}": shared / "data" / "coco_subsets" / a for a, s in COCO_FILES},
    }
    for what, p in paths.items():
        if not p.exists():
            raise InputError(f"--shared {shared}: {what} expected at {p}, not found")
    return paths


def _timed(state: State, step: str, say: Say, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    rec = state.done(step)
    if rec is not None:
        say(f"[skip] {step}: done in an earlier run ({rec.get('seconds', 0):.0f} s)")
        return rec
    say(f"[step] {step} ...")
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    rec = fn()
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    rec["load_avg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    state.finish(step, **rec)
    say(
        f"[done] {step}: {rec['seconds']:.0f} s (1-min load {load0:.1f} -> {rec['load_avg_1min'][1]:.1f})"
    )
    return rec


def _bar(desc: str) -> tuple[Any, Callable[[float, str], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=1000, desc=desc, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}"
    )

    def progress(frac: float, msg: str) -> None:
        bar.n = int(max(0.0, min(frac, 1.0)) * 1000)
        bar.set_postfix_str(msg[:60], refresh=True)

    return bar, progress


def run_real_recipe(
    shared: str | os.PathLike, out: str | os.PathLike, budget: Budget | None = None,
    say: Say = print, *, open_model: Callable[[Any, str, str], Any],
) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) the recipe; returns the results document (also in ``out/results.json``).

    ``open_model(store, name, device)`` is the application layer's ``frozen_model``: the
    registered ERFNet, loaded once for every step."""
    from db import catalog
    from db.store import Store

    budget = budget or Budget()
    shared, out = Path(shared).resolve(), Path(out).resolve()
    paths = check_shared(shared)
    if budget.samples < len(COCO_FILES):
        raise InputError(
            f"samples {budget.samples}; expected >= {len(COCO_FILES)} (one per COCO file)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads").mkdir(exist_ok=True)
    state = State(out / "state.json")
    prev = state.doc.get("budget")
    if prev is not None and prev != budget.to_dict():
        raise InputError(
            f"{out} holds a run with another budget ({prev}); use a new --out folder to change it"
        )
    state.doc["budget"] = budget.to_dict()
    _atomic_json(state.path, state.doc)
    ws = out / "workspace"
    store = Store.open(workspace=ws)
    t_all = time.perf_counter()
    try:

        def setup() -> dict[str, Any]:
            with store.session() as s:
                m = catalog.register_model(
                    s, MODEL_NAME, "erfnet", paths["checkpoint"], input_size=budget.input_size
                )
                ids = {n: catalog.register_dataset(s, n, "eval", paths[f"eval:{n}"]).id
                       for n in EVAL_SETS}  # fmt: skip
                return {"model_id": m.id, "eval_dataset_ids": ids}

        _timed(state, "workspace", say, setup)

        def eval_images() -> dict[str, Any]:
            # hashed and sized in the catalog, so the app's tabs can open them
            from anomseg.data.benchmark import BenchmarkDataset

            n = {}
            with store.session() as s:
                for name in EVAL_SETS:
                    row = catalog.get_dataset(s, name)
                    paths_ = [
                        smp.image_path for smp in BenchmarkDataset(row.root, name=name).samples
                    ]
                    n[name] = len(catalog.register_images(s, row, paths_))
            return {"images": n}

        _timed(state, "eval-images", say, eval_images)
        _timed(state, "samples", say, lambda: _samples(store, ws, paths, budget, say))
        frozen = open_model(store, MODEL_NAME, "cpu")
        predictor = frozen.get_predictor()
        heads: dict[str, dict[str, Any]] = {}
        for kind in ("stats", "features", "oe"):
            heads[kind] = _timed(
                state, f"train:{kind}", say,
                lambda kind=kind: _train(store, ws, out, kind, budget, frozen),
            )  # fmt: skip
        evald = _timed(
            state, "evaluate", say, lambda: _evaluate(store, out, heads, budget, predictor)
        )
    finally:
        store.close()
    doc = {
        "model": MODEL_NAME,
        "checkpoint": str(paths["checkpoint"]),
        "input_size": list(budget.input_size),
        "units": "fraction",
        "rows": evald["rows"],
        "heads": {
            k: {"file": v["file"], "version": v["version"], "train": v.get("train")}
            for k, v in heads.items()
        },  # fmt: skip
        "trained_on": state.done("samples"),
        "steps": {
            k: {"seconds": v.get("seconds"), "load_avg_1min": v.get("load_avg_1min")}
            for k, v in state.doc["steps"].items()
        },  # fmt: skip
        "budget": budget.to_dict(),
        "wall_seconds_this_run": round(time.perf_counter() - t_all, 1),
        "cpu_count": os.cpu_count(),
    }
    _atomic_json(out / "results.json", doc)
    return doc


def _samples(
    store: Any, ws: Path, paths: dict[str, Path], budget: Budget, say: Say
) -> dict[str, Any]:
    """Accepted CamVid x COCO samples, ``budget.samples`` spread over the four COCO files."""
    from db import catalog
    from db.pastes import list_samples
    from training.synth_samples import generate_samples

    per = [budget.samples // len(COCO_FILES)] * len(COCO_FILES)
    for i in range(budget.samples % len(COCO_FILES)):
        per[i] += 1
    made: dict[str, int] = {}
    bar, progress = _bar("pastes")
    try:
        for (sub, split), n in zip(COCO_FILES, per, strict=True):
            name = f"camvid-coco-{sub}-{split.removesuffix('2017')}"
            have = 0
            with store.read() as s:
                try:
                    ds = catalog.get_dataset(s, name)
                    have = len(list_samples(s, dataset_id=ds.id, status="accepted"))
                except InputError:
                    pass
            if have < n:
                root = paths[f"coco:{sub}/{split}"]
                generate_samples(
                    store, name, n - have,
                    backgrounds={"source": "labelled", "options": {
                        "root": str(paths["camvid"]), "images": "train", "labels": "trainannot",
                        "class_map": "camvid"}},
                    objects={"source": "coco", "options": {
                        "annotations": str(root / "annotations" / f"instances_{split}.json"),
                        "images": str(root / split)}},
                    placement=budget.placement or None, instances=budget.instances,
                    seed=budget.seed + len(made), status="accepted", workspace=ws,
                    progress=progress,
                )  # fmt: skip
            with store.read() as s:
                ds = catalog.get_dataset(s, name)
                made[name] = len(list_samples(s, dataset_id=ds.id, status="accepted"))
            say(f"  {name}: {made[name]} accepted samples")
    finally:
        bar.close()
    return {"datasets": made, "total": sum(made.values()),
            "backgrounds": "CamVid train (367 frames, 480x360, class map camvid)",
            "objects": [f"COCO {a}/{s}" for a, s in COCO_FILES]}  # fmt: skip


def _train(
    store: Any, ws: Path, out: Path, kind: str, budget: Budget, frozen: Any
) -> dict[str, Any]:
    """Train one learned kind from the accepted samples; copy its file to ``out/heads``."""
    from training.outlier_exposure import OEConfig, train_oe_version
    from training.trainer import TrainConfig, train_head

    bar, progress = _bar(f"train {kind}")
    try:
        if kind == "oe":
            res = train_oe_version(
                store, ws, frozen, OEConfig(seed=budget.seed, **budget.oe), device="cpu",
                evaluate=False, progress=progress,
            )  # fmt: skip
        else:
            cfg = TrainConfig(head=kind, epochs=budget.head_epochs, seed=budget.seed)
            res = train_head(store, ws, frozen, cfg, device="cpu", evaluate=False,
                             progress=progress)  # fmt: skip
    finally:
        bar.close()
    dest = out / "heads" / f"{kind}.safetensors"
    src = Path(res["checkpoint"])
    with atomic_paths(dest, dest.with_suffix(".json")) as (tmp_w, tmp_j):
        shutil.copyfile(src, tmp_w)
        shutil.copyfile(src.with_suffix(".json"), tmp_j)
    train = res["metrics"]["train"]
    return {
        "file": str(dest),
        "version": res["version"],
        "head_id": res["head_id"],
        "counts": res.get("snapshot_counts"),
        "train": {k: train[k] for k in ("final_loss", "steps", "seconds") if k in train},
    }


def _oe_variants(dest: Path) -> dict[str, str]:
    """``oe-<score>.safetensors`` for the scores the trained file does not use (same weights)."""
    from anomseg.models.heads import load_head, read_head_metadata, save_head
    from anomseg.models.outlier_exposure import OE_SCORES

    head, meta = load_head(dest)
    extra = {k: v for k, v in meta.items() if k not in ("format", "kind", "in_dim", "feat_dim",
                                                         "config")}  # fmt: skip
    out, own = {}, head.score  # read once: the loop re-points head.score
    for score in OE_SCORES:
        if score == own:
            continue
        head.score = score
        path = dest.with_name(f"oe-{score}.safetensors")
        save_head(head, path, **extra)
        assert read_head_metadata(path)["config"]["score"] == score
        out[score] = str(path)
    return out


def _evaluate(store: Any, out: Path, heads: dict[str, dict[str, Any]], budget: Budget,
              predictor: Any) -> dict[str, Any]:  # fmt: skip
    """Post-hoc methods and every learned kind on both eval sets, one forward per image; rows
    go to the store too (the Leaderboard), learned kinds under their ``head:N`` names."""
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.evaluate import attach_protocol, evaluate
    from anomseg.models.heads import head_spec, load_head
    from db import catalog
    from db.results import record_eval_rows

    with store.read() as s:
        model = catalog.get_model(s, MODEL_NAME)
        model_id, ckpt, ckpt_sha = model.id, model.checkpoint_path, model.checkpoint_sha256
        ds_ids = {n: catalog.get_dataset(s, n).id for n in EVAL_SETS}
        roots = {n: catalog.get_dataset(s, n).root for n in EVAL_SETS}
    extra, names = {}, {}
    for kind, rec in heads.items():
        name = f"head:{kind}"
        head, _meta = load_head(rec["file"], base=ckpt)
        extra[name] = head_spec(name, head, label=f"{kind} (head:{rec['version']})")
        names[name] = (kind, rec, rec["file"])
        # the same tuned layers read by the other scores, each its own head file
        variants = _oe_variants(Path(rec["file"])) if kind == "oe" else {}
        for score, path in variants.items():
            # one head object for every score: the tuned decoder runs once per image
            vname = f"head:{kind}-{score}"
            extra[vname] = replace(head_spec(vname, head), fn=head.scorer(score))
            names[vname] = (kind, rec, path)
    datasets = []
    for n in EVAL_SETS:
        ds = BenchmarkDataset(roots[n], name=n)
        if budget.eval_limit is not None:
            ds.samples = ds.samples[: budget.eval_limit]
        datasets.append(ds)
    # per-image values too: the Leaderboard's worst images of these rows read them
    rows = evaluate(predictor, datasets, [*POSTHOC, *extra], extra=extra)
    attach_protocol(rows, datasets, predictor.input_size, checkpoint_sha256=ckpt_sha or "")
    out_rows = []
    with store.session() as s:
        for r in rows:
            kind_rec = names.get(r.method)
            stored = f"head:{kind_rec[1]['version']}" if kind_rec else r.method
            if kind_rec and kind_rec[2] != kind_rec[1]["file"]:
                stored = None  # another score of the same version: results.json only
            if stored:
                params = (
                    {"kind": kind_rec[0], "head_id": kind_rec[1]["head_id"]} if kind_rec else {}
                )
                record_eval_rows(s, model_id, [replace(r, method=stored)], ds_ids,
                                 params={**params, "recipe": "real"})  # fmt: skip
            out_rows.append({
                "model": MODEL_NAME, "method": r.method, "dataset": r.dataset,
                "auprc": r.auprc, "fpr95": r.fpr95, "auroc": r.auroc, "n_images": r.n_images,
                "stored_as": stored, **({"file": kind_rec[2]} if kind_rec else {}),
            })  # fmt: skip
    return {"rows": out_rows}


def format_results(doc: dict[str, Any]) -> str:
    """The results as a plain table (percent)."""
    lines = [f"{'dataset':<14} {'method':<14} {'AuPRC%':>7} {'FPR95%':>7} {'AUROC%':>7}"]
    for r in doc["rows"]:

        def pct(v: Any) -> str:
            return "    n/a" if v is None or v != v else f"{100 * v:7.2f}"

        lines.append(f"{r['dataset']:<14} {r['method']:<14} {pct(r['auprc'])} {pct(r['fpr95'])} "
                     f"{pct(r['auroc'])}")  # fmt: skip
    return "\n".join(lines)
