"""Store-backed synthetic samples: plan pastes on a dataset's backgrounds, store them, render them.

A synthetic dataset carries the specs of its sources in the store, in its existing JSON column
(``Dataset.label_remap_json``, which only benchmark datasets use for label values), under the
key ``"synth"``::

    {"synth": {"backgrounds": {"source": "labelled", "options": {"root": ..., "class_map": ...}},
               "objects": {"source": "coco", "options": {"annotations": ..., "images": ...}},
               "placement": {...PlacementConfig fields...} | null,
               "instances": [1, 3]}}

``generate_samples`` is the one headless way to add samples: it draws backgrounds (unused ones
first, in a seeded order), plans pastes with the placement engine, renders them, writes the
render cache (image + ground truth under ``<workspace>/cache/renders``) and stores each sample
with its paste records in one transaction, files first, so an interruption never leaves a stored
sample without its picture. Accepted samples train heads through
``training.dataset.training_images_from_store``. A dataset without specs (the built-in world's
demo data) gets fresh procedural scenes with bank objects, as before.

An unlabelled folder (source ``folder``) is labelled by a registered model's predictions; the
pseudo-labels are pinned in the background id (see ``anomseg.synth.folder``) and stored under
``<workspace>/pseudo_labels``, so re-rendering a sample never needs the model again.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.errors import InputError

SPEC_KEY = "synth"
MAX_SAMPLES = 500
Progress = Callable[[float, str], None]


# --- specs -------------------------------------------------------------------------------------


def _check_spec(spec: Any, what: str, registry: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("source"), str):
        raise InputError(f"{what}: expected {{'source': name, 'options': {{...}}}}, got {spec!r}")
    unknown = sorted(set(spec) - {"source", "options"})
    if unknown:
        raise InputError(f"{what}: unknown key {unknown[0]!r}; expected 'source' and 'options'")
    if spec["source"] not in registry:
        raise InputError(
            f"{what}: source {spec['source']!r} is unknown; expected one of "
            f"{', '.join(registry.names())}"
        )
    opts = spec.get("options") or {}
    if not isinstance(opts, dict):
        raise InputError(f"{what}.options: expected a mapping, got {opts!r}")
    return {"source": spec["source"], "options": json.loads(json.dumps(opts, default=str))}


def dataset_spec(dataset: Any) -> dict[str, Any] | None:
    """The ``synth`` spec a synthetic dataset carries, or None (procedural demo datasets)."""
    if dataset.role != "synthetic":
        return None
    blob = dataset.label_remap
    if isinstance(blob, dict) and isinstance(blob.get(SPEC_KEY), dict):
        return blob[SPEC_KEY]
    return None


def make_spec(
    backgrounds: dict[str, Any],
    objects: dict[str, Any],
    placement: dict[str, Any] | None = None,
    instances: tuple[int, int] = (1, 3),
) -> dict[str, Any]:
    """A validated ``synth`` spec (sources registered, placement fields checked)."""
    from anomseg.synth.config import ensure_sources_registered
    from anomseg.synth.sources import BACKGROUND_SOURCES, OBJECT_SOURCES

    ensure_sources_registered()
    lo, hi = (tuple(instances) + (None, None))[:2]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) or not (
        1 <= lo <= hi <= 50
    ):
        raise InputError(
            f"instances: expected [min, max] with 1 <= min <= max <= 50, got {instances!r}"
        )
    if placement is not None:
        _placement(placement)  # validate now, before anything is stored
    return {
        "backgrounds": _check_spec(backgrounds, "backgrounds", BACKGROUND_SOURCES),
        "objects": _check_spec(objects, "objects", OBJECT_SOURCES),
        "placement": dict(placement) if placement else None,
        "instances": [lo, hi],
    }


def _placement(data: dict[str, Any] | None) -> Any:
    from anomseg.synth.placement import PlacementConfig

    data = dict(data or {})
    for key in ("area_ratio", "rotation_range", "forbidden_classes"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    return PlacementConfig.from_dict(data)


def create_synthetic_dataset(
    store: Any,
    name: str,
    spec: dict[str, Any],
    *,
    workspace: str | Path | None = None,
) -> int:
    """Register (or find) synthetic dataset ``name`` carrying ``spec``; returns its id.

    An existing dataset keeps its spec: one drawing from other sources is refused (its samples
    re-render from the spec, so changing it would change their pictures).
    """
    from db import catalog

    ws = _workspace(store, workspace)
    spec = _pin_defaults(spec, ws)
    # the folder is named after the dataset, kept to safe characters (a name is free text)
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "dataset"
    root = ws / "synthetic" / folder

    def write(s: Any) -> int:
        existing = _find_dataset(s, name)
        if existing is not None:
            if existing.role != "synthetic":
                raise InputError(
                    f"dataset {name!r} is registered with role {existing.role!r}; expected a "
                    "synthetic dataset (pick another name)"
                )
            old = dataset_spec(existing)
            if old is not None and old != spec:
                raise InputError(
                    f"synthetic dataset {name!r} already draws backgrounds "
                    f"{_describe(old['backgrounds'])} and objects {_describe(old['objects'])}; "
                    "create another synthetic dataset for other sources"
                )
            if old is None and catalog_has_samples(s, existing.id):
                raise InputError(
                    f"synthetic dataset {name!r} already holds procedural samples; create another "
                    "synthetic dataset for real backgrounds"
                )
            existing.label_remap = {SPEC_KEY: spec}
            return int(existing.id)
        root.mkdir(parents=True, exist_ok=True)
        ds = catalog.register_dataset(s, name, "synthetic", root, layout="synthetic")
        ds.label_remap = {SPEC_KEY: spec}
        s.flush()
        return int(ds.id)

    return int(store.transact(write))


def catalog_has_samples(session: Any, dataset_id: int) -> bool:
    """Whether a dataset already holds synthetic samples."""
    from db.pastes import list_samples

    return bool(list_samples(session, dataset_id=dataset_id))


def _find_dataset(session: Any, name: str) -> Any:
    from sqlalchemy import select

    from db.models import Dataset

    return session.scalar(select(Dataset).where(Dataset.name == name))


def _describe(spec: dict[str, Any]) -> str:
    opts = spec.get("options") or {}
    where = opts.get("root") or opts.get("annotations") or ""
    return f"{spec['source']}:{where}" if where else str(spec["source"])


def _workspace(store: Any, workspace: str | Path | None) -> Path:
    if workspace is not None:
        return Path(workspace).resolve()
    from db.engine import sqlite_path

    path = sqlite_path(store.url)
    if path is None:
        raise InputError("a workspace folder is needed (the store is not a workspace's SQLite)")
    return path.resolve().parent


def _pin_defaults(spec: dict[str, Any], ws: Path) -> dict[str, Any]:
    """Absolute paths, and a pseudo-label folder for an unlabelled folder source."""
    spec = json.loads(json.dumps(spec))
    from anomseg.synth.config import PATH_KEYS
    from anomseg.synth.sources import BACKGROUND_SOURCES, OBJECT_SOURCES

    # the path options a source declares ("images" is a folder name under a labelled root)
    for part, registry in (("backgrounds", BACKGROUND_SOURCES), ("objects", OBJECT_SOURCES)):
        keys = getattr(registry.get(spec[part]["source"]), "PATH_OPTIONS", PATH_KEYS)
        opts = spec[part].setdefault("options", {})
        for key, value in list(opts.items()):
            if key in keys and isinstance(value, str):
                opts[key] = str(Path(value).expanduser().resolve())
            elif key in keys and isinstance(value, list):
                opts[key] = [str(Path(v).expanduser().resolve()) for v in value]
    bg = spec["backgrounds"]
    if bg["source"] == "folder":
        bg["options"].setdefault("pseudo_labels", str(ws / "pseudo_labels"))
    return spec


# --- building sources --------------------------------------------------------------------------


def build_backgrounds(
    spec: dict[str, Any],
    *,
    predictor: Any = None,
    predictor_for: Callable[[str], Any] | None = None,
) -> Any:
    """The background source of a spec; a folder source gets its model's predictor.

    ``predictor_for(model name)`` builds it (the application layer's ``Workspace.predictor``);
    ``predictor`` overrides it (tests).
    """
    from anomseg.synth.config import ensure_sources_registered
    from anomseg.synth.sources import BACKGROUND_SOURCES

    ensure_sources_registered()
    opts = dict(spec.get("options") or {})
    if spec["source"] == "folder":
        if predictor is None and opts.get("model") and predictor_for is not None:
            predictor = predictor_for(opts["model"])
        opts["predictor"] = predictor
    try:
        return BACKGROUND_SOURCES.get(spec["source"])(**opts)
    except TypeError as exc:  # an option the builder does not take
        raise InputError(f"backgrounds ({spec['source']}): {exc}") from None


def build_objects(spec: dict[str, Any]) -> Any:
    """The object source of a spec."""
    from anomseg.synth.config import ensure_sources_registered
    from anomseg.synth.sources import OBJECT_SOURCES

    ensure_sources_registered()
    try:
        return OBJECT_SOURCES.get(spec["source"])(**dict(spec.get("options") or {}))
    except TypeError as exc:
        raise InputError(f"objects ({spec['source']}): {exc}") from None


def sample_sources(store: Any, sample_id: int) -> tuple[Any, Any] | None:
    """(background source, object source) a stored sample re-renders from, or None (procedural).

    Loading a sample's (pinned) background never runs a model.
    """
    from db.pastes import get_sample

    with store.read() as s:
        spec = dataset_spec(get_sample(s, int(sample_id)).dataset)
    if spec is None:
        return None
    return build_backgrounds(spec["backgrounds"]), build_objects(spec["objects"])


def object_source_for(store: Any, source: str, object_id: str | None = None) -> Any | None:
    """The object source named ``source`` that a synthetic dataset's spec builds, or None.

    With ``object_id``, the first such source that knows that object (two datasets may draw
    from different COCO files under the same source name).
    """
    from db import catalog

    with store.read() as s:
        specs = [dataset_spec(d) for d in catalog.list_datasets(s, role="synthetic")]
    for spec in specs:
        if spec is not None and spec["objects"]["source"] == source:
            src = build_objects(spec["objects"])
            if object_id is None or str(object_id) in set(src.ids()):
                return src
    return None


# --- generating --------------------------------------------------------------------------------


def _store_sample(
    store: Any,
    ds_id: int,
    background_id: str,
    records: list[Any],
    rendered: Any,
    *,
    seed: int,
    status: str,
    out_dir: Path,
) -> int:
    """Files first, then sample + pastes + render cache in one transaction; the sample id."""
    from anomseg.synth.render_cache import revisions_hash, write_render_cache
    from db import pastes as dbpastes

    uid = uuid.uuid4().hex
    revs = {f"p{i}": dbpastes.content_hash(r.to_dict()) for i, r in enumerate(records)}
    cache = write_render_cache(out_dir, uid, revs, rendered.rgb, rendered.gt)
    rh = cache["revisions_hash"]
    pastes = [(f"p{i}", r.to_dict()) for i, r in enumerate(records)]

    def write(s: Any) -> int:
        smp = dbpastes.create_sample(
            s, ds_id, background_id, pastes, seed=seed, status=status, author="generator", uid=uid
        )
        stored = {p.key: r.content_hash for p, r in dbpastes.current_revisions(s, smp.id)}
        if revisions_hash(stored) != rh:  # the files are named by this hash: they must agree
            raise RuntimeError(f"sample {uid}: stored revisions differ from the rendered ones")
        dbpastes.set_render_cache(s, smp.id, cache)
        return int(smp.id)

    return int(store.transact(write))


def generate_samples(
    store: Any,
    dataset: str,
    n: int,
    *,
    backgrounds: dict[str, Any] | None = None,
    objects: dict[str, Any] | None = None,
    seed: int = 0,
    status: str = "proposed",
    progress: Progress | None = None,
    workspace: str | Path | None = None,
    placement: dict[str, Any] | None = None,
    instances: tuple[int, int] | None = None,
    predictor: Any = None,
    predictor_for: Callable[[str], Any] | None = None,
) -> list[int]:
    """Add up to ``n`` samples to synthetic dataset ``dataset``; returns their ids.

    ``backgrounds`` / ``objects`` (specs ``{"source", "options"}``) create the dataset, or must
    equal the specs it already carries; without them the stored specs are used, and a dataset
    with none gets procedural scenes. ``status`` is ``proposed`` (to curate) or ``accepted``
    (trains at once). A ``folder`` source labels its frames with ``predictor_for(model name)``
    (``predictor`` overrides it: tests).
    """
    from db import catalog
    from db.models import SAMPLE_STATUSES

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise InputError(f"n: expected an integer in 1..{MAX_SAMPLES}, got {n!r}")
    if status not in SAMPLE_STATUSES[:2]:
        raise InputError(f"status: expected 'proposed' or 'accepted', got {status!r}")
    say = progress or (lambda f, m: None)
    ws = _workspace(store, workspace)
    built = None
    if backgrounds is not None or objects is not None:
        if backgrounds is None or objects is None:
            raise InputError("give both backgrounds and objects specs, or neither")
        spec = _pin_defaults(
            make_spec(backgrounds, objects, placement, tuple(instances or (1, 3))), ws
        )
        # build both sources first: a bad root, class map or COCO file is refused before the
        # dataset is created
        built = (
            build_backgrounds(
                spec["backgrounds"], predictor=predictor, predictor_for=predictor_for
            ),
            build_objects(spec["objects"]),
        )
        create_synthetic_dataset(store, dataset, spec, workspace=ws)
    with store.read() as s:
        ds = catalog.get_dataset(s, dataset)
        if ds.role != "synthetic":
            raise InputError(
                f"dataset {dataset!r} has role {ds.role!r}; expected a synthetic dataset"
            )
        ds_id, spec = ds.id, dataset_spec(ds)
        used = [smp.background_id for smp in _samples(s, ds_id)]
    out_dir = ws / "cache" / "renders"
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec is None:
        return _procedural(store, ds_id, n, seed, status, out_dir, say)
    if backgrounds is None and placement is not None:  # a one-off override for this batch
        spec = {**spec, "placement": dict(placement)}
    if backgrounds is None and instances is not None:
        spec = {
            **spec,
            "instances": list(
                make_spec(spec["backgrounds"], spec["objects"], None, tuple(instances))["instances"]
            ),
        }
    if built is None:
        built = (
            build_backgrounds(
                spec["backgrounds"], predictor=predictor, predictor_for=predictor_for
            ),
            build_objects(spec["objects"]),
        )
    return _from_spec(store, ds_id, spec, built, used, n, seed, status, out_dir, say)


def _samples(session: Any, ds_id: int) -> list[Any]:
    from db.pastes import list_samples

    return list_samples(session, dataset_id=ds_id)


def _from_spec(
    store: Any,
    ds_id: int,
    spec: dict[str, Any],
    built: tuple[Any, Any],
    used: list[str],
    n: int,
    seed: int,
    status: str,
    out_dir: Path,
    say: Progress,
) -> list[int]:
    from collections import Counter

    from anomseg.synth.folder import split_pinned
    from anomseg.synth.placement import propose, rng_for
    from anomseg.synth.render import render

    bgs, objs = built
    cfg = _placement(spec.get("placement"))
    lo, hi = spec.get("instances") or (1, 3)
    ids = bgs.ids()
    if not objs.ids():
        raise InputError(f"object source {_describe(spec['objects'])} has no objects to paste")
    # unused backgrounds first, each in a seeded order; a re-used one draws with a fresh seed
    times = Counter(split_pinned(b)[0] for b in used)
    order = [ids[int(i)] for i in rng_for(seed, "backgrounds").permutation(len(ids))]
    order.sort(key=lambda b: times[b])
    made: list[int] = []
    skipped: Counter[str] = Counter()
    for bid in order:
        if len(made) >= n:
            break
        rounds = times[bid]
        sub_seed = seed if rounds == 0 else seed * 1_000_003 + rounds
        bg = bgs.load(bid)
        k = int(rng_for(sub_seed, bg.id, "count").integers(lo, hi + 1))
        records, why = propose(bg, objs, k, cfg, seed=sub_seed)
        if not records:
            skipped[why or "nothing placed"] += 1
            continue
        rendered = render(bg, records, {objs.name: objs})
        sid = _store_sample(
            store, ds_id, bg.id, records, rendered, seed=sub_seed, status=status, out_dir=out_dir
        )
        made.append(sid)
        say(len(made) / n, f"sample #{sid}: {len(records)} pastes on {bg.id}")
    if not made:
        why = "; ".join(f"{k} x{v}" for k, v in skipped.most_common(3))
        raise InputError(f"could not place any object on {len(order)} backgrounds ({why})")
    return made


def _procedural(
    store: Any, ds_id: int, n: int, seed: int, status: str, out_dir: Path, say: Progress
) -> list[int]:
    """Fresh procedural scenes with bank objects (datasets without specs: the demo world)."""
    from anomseg.imageio import image_size
    from anomseg.synth.render import render
    from anomseg.world.demo_data import SPECS, plan_pastes
    from anomseg.world.objects import ObjectBank
    from anomseg.world.scenes import DEFAULT_SIZE, generate_scene, parse_scene_id

    with store.read() as s:
        used, size = [], None
        for smp in _samples(s, ds_id):
            try:
                used.append(parse_scene_id(smp.background_id))
            except InputError:
                continue
            if size is None and smp.render and smp.render.get("image"):
                p = Path(smp.render["image"])
                p = p if p.is_absolute() else Path(smp.dataset.root) / p
                if p.is_file():
                    size = image_size(p)
    size = size or DEFAULT_SIZE
    next_scene = max(used, default=10_000_000) + 1
    bank = ObjectBank(SPECS["train"].categories, *SPECS["train"].objects)
    made: list[int] = []
    tries = 0
    while len(made) < n and tries < 4 * n:
        scene = next_scene + tries
        tries += 1
        bg = generate_scene(scene, size)
        records = plan_pastes(bg, "train", np.random.default_rng([seed, scene, 0x6E4]))
        if not records:
            continue
        rendered = render(bg, records, {"bank": bank})
        sid = _store_sample(
            store, ds_id, bg.id, records, rendered, seed=seed, status=status, out_dir=out_dir
        )
        made.append(sid)
        say(len(made) / n, f"sample #{sid} ({len(records)} pastes on {bg.id})")
    if not made:
        raise InputError("could not place any object on the generated scenes; try again")
    return made
