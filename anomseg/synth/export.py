"""Batch export: plan, render and write every background of a synth config, resumably.

Output folder layout::

    images/<name>.png|jpg     rendered RGB
    gt/<name>.png             ground truth (labels.normal / anomaly / ignore)
    instances/<name>.png      uint16 instance map (0 none, k = k-th paste in compositing order)
    manifest.jsonl            one line per background (see ``plan_entry``)
    config.json               the effective config of the last run

Per background: a generator seeded from (seed, background id, "plan") decides whether the
background goes to the synthetic or the clean split and how many instances to plan; placement
uses its own (seed, background id) stream. Nothing depends on other backgrounds, so any
``workers`` count gives byte-identical files.

Resume: each finished item is appended to the manifest at once; a re-run reads it (ignoring a
torn last line), skips items whose records hash and render settings are unchanged and whose
files exist, and at the end rewrites the manifest atomically with one line per background.
Temporary files a killed run left (``atomic_write``'s ``.<name>.*.tmp``) are deleted first.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomseg.atomic import TMP_GLOB, atomic_write
from anomseg.synth.config import SynthConfig, build_sources
from anomseg.synth.imageio import encode_image
from anomseg.synth.placement import propose, rng_for
from anomseg.synth.records import PasteRecord, records_hash
from anomseg.synth.render import render
from anomseg.synth.sources import Background, BackgroundSource, ObjectSource

MANIFEST = "manifest.jsonl"


def output_name(background_id: str) -> str:
    """A file-system-safe, collision-free file stem for a background id."""
    flat = background_id.replace("/", "__")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", flat)
    if safe != flat or "__" in background_id or safe.startswith("."):
        safe += "-" + hashlib.sha256(background_id.encode("utf-8")).hexdigest()[:8]
    return safe


def output_paths(background_id: str, image_format: str) -> dict[str, str]:
    """Paths (relative to the output folder) of one sample's three files."""
    name = output_name(background_id)
    return {
        "image": f"images/{name}.{image_format}",
        "gt": f"gt/{name}.png",
        "instances": f"instances/{name}.png",
    }


def plan(
    cfg: SynthConfig, background: Background, objects: ObjectSource
) -> tuple[str, int, list[PasteRecord], str | None]:
    """(planned split, planned instance count, placed records, reason when short or clean)."""
    rng = rng_for(cfg.seed, background.id, "plan")
    synthetic = bool(rng.random() < cfg.synthetic_ratio)
    n = int(rng.integers(cfg.instances[0], cfg.instances[1] + 1))
    if not synthetic:
        return (
            "clean",
            0,
            [],
            f"drawn into the clean split (split.synthetic = {cfg.synthetic_ratio:g})",
        )
    records, reason = propose(background, objects, n, cfg.placement, cfg.seed)
    if n == 0:
        reason = "instances.min and instances.max allow 0 pastes"
    return "synthetic", n, records, reason


def plan_entry(cfg: SynthConfig, background: Background, objects: ObjectSource) -> dict[str, Any]:
    """The manifest line of one background (without writing anything)."""
    planned_split, n, records, reason = plan(cfg, background, objects)
    return {
        "background_id": background.id,
        "background_source": cfg.backgrounds.source,
        "object_source": cfg.objects.source,
        "split": "synthetic" if records else "clean",
        "planned_split": planned_split,
        "planned": n,
        "placed": len(records),
        "reason": reason,
        "records": [r.to_dict() for r in records],
        "records_hash": records_hash(records),
        "render_key": cfg.render_key(),
        "size": [int(background.labels.shape[1]), int(background.labels.shape[0])],
        "outputs": output_paths(background.id, cfg.export.image_format),
    }


def write_sample(
    cfg: SynthConfig, out: Path, background: Background, objects: ObjectSource, entry: dict
) -> None:
    """Render the entry's records and write the three files atomically."""
    records = [PasteRecord.from_dict(r) for r in entry["records"]]
    rendered = render(
        background,
        records,
        {objects.name: objects, cfg.objects.source: objects},
        rim=cfg.rim,
        labels=cfg.labels,
    )
    outs = entry["outputs"]
    fmt = cfg.export.image_format
    # not flushed one by one: a file lost to a crash is re-rendered from its manifest entry
    files = (
        (outs["image"], encode_image(rendered.rgb, fmt, cfg.export.jpg_quality)),
        (outs["gt"], encode_image(rendered.gt)),
        (outs["instances"], encode_image(rendered.instances)),
    )
    for name, data in files:
        atomic_write(out / name, data, durable=False)


def _unchanged(prev: dict | None, entry: dict, out: Path) -> bool:
    if prev is None:
        return False
    same = all(prev.get(k) == entry[k] for k in ("records_hash", "render_key", "outputs", "split"))
    return same and all((out / p).is_file() for p in entry["outputs"].values())


# -- worker side -------------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _init_worker(cfg: SynthConfig, out: Path) -> None:
    bg_source, obj_source = build_sources(cfg)
    _STATE.update(cfg=cfg, out=out, bg=bg_source, obj=obj_source)


def _process(task: tuple[str, dict | None]) -> tuple[dict, bool]:
    background_id, prev = task
    cfg: SynthConfig = _STATE["cfg"]
    out: Path = _STATE["out"]
    background = _STATE["bg"].load(background_id)
    entry = plan_entry(cfg, background, _STATE["obj"])
    if _unchanged(prev, entry, out):
        return entry, False
    write_sample(cfg, out, background, _STATE["obj"], entry)
    return entry, True


# -- driver ------------------------------------------------------------------------------------
def _run_tasks(cfg, out_dir, tasks, workers, bg_source, obj_source):
    """Yield (entry, rendered?) per task, in task order, in this process or in a pool."""
    if workers > 1 and len(tasks) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # fork: workers inherit the imported modules and need no importable __main__ (spawn
        # re-runs the main script, which breaks for `python -` and notebooks). A pool executor
        # rather than multiprocessing.Pool: a worker killed by the OS raises instead of hanging.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        ex = ProcessPoolExecutor(
            min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker,
            initargs=(cfg, out_dir),
        )  # fmt: skip
        try:
            yield from ex.map(_process, tasks, chunksize=1)
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)  # stop at the first error, not the end
            raise
        ex.shutdown(wait=True)
        return
    _STATE.update(cfg=cfg, out=out_dir, bg=bg_source, obj=obj_source)
    try:
        for task in tasks:
            yield _process(task)
    finally:
        _STATE.clear()


def read_manifest(path: Path) -> dict[str, dict]:
    """Background id -> last entry; unparseable lines (a torn write) are skipped."""
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("background_id"), str):
                entries[entry["background_id"]] = entry
    return entries


def _line(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete ``atomic_write`` temporaries (``.<name>.*.tmp``) left by a killed earlier run."""
    # one export per folder at a time (the manifest assumes it too), so none is in use now
    for folder in (out_dir, out_dir / "images", out_dir / "gt", out_dir / "instances"):
        if folder.is_dir():
            for tmp in folder.glob(TMP_GLOB):
                tmp.unlink(missing_ok=True)


@dataclass
class ExportSummary:
    """What one export run did."""

    out: Path
    total: int
    rendered: int
    skipped: int
    synthetic: int
    clean: int
    pastes: int


def export(
    cfg: SynthConfig,
    *,
    out: str | Path | None = None,
    limit: int | None = None,
    workers: int = 1,
    progress: bool = True,
    sources: tuple[BackgroundSource, ObjectSource] | None = None,
) -> ExportSummary:
    """Plan, render and write the config's backgrounds (the first ``limit``) into ``out``."""
    from tqdm import tqdm

    out_dir = Path(out) if out is not None else cfg.export.out
    # sources first: a missing dataset is refused before any output folder exists
    if sources is None or workers > 1:
        sources = build_sources(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    bg_source, obj_source = sources
    ids = bg_source.ids()
    if limit is not None:
        ids = ids[: max(limit, 0)]
    manifest = out_dir / MANIFEST
    previous = read_manifest(manifest)
    tasks = [(bid, previous.get(bid)) for bid in ids]
    atomic_write(
        out_dir / "config.json",
        json.dumps(cfg.to_dict(), indent=2, sort_keys=True).encode("utf-8"),
    )

    results: dict[str, dict] = {}
    rendered = 0
    bar = tqdm(total=len(tasks), desc="synth", unit="img", disable=not progress, file=sys.stderr)
    with open(manifest, "a", encoding="utf-8") as log:
        for entry, did in _run_tasks(cfg, out_dir, tasks, workers, bg_source, obj_source):
            rendered += did
            results[entry["background_id"]] = entry
            log.write(_line(entry))
            log.flush()  # one finished item = one line on disk, so a crash loses nothing
            bar.update(1)
    bar.close()

    # Final manifest: one line per background, in source order; entries of earlier runs for
    # backgrounds not processed now (e.g. a smaller --limit) are kept as they describe files.
    merged = {**previous, **results}
    order = {bid: i for i, bid in enumerate(bg_source.ids())}
    keys = sorted(merged, key=lambda b: (order.get(b, len(order)), b))
    atomic_write(manifest, "".join(_line(merged[k]) for k in keys).encode("utf-8"))
    done = list(results.values())
    return ExportSummary(
        out=out_dir,
        total=len(done),
        rendered=rendered,
        skipped=len(done) - rendered,
        synthetic=sum(e["split"] == "synthetic" for e in done),
        clean=sum(e["split"] == "clean" for e in done),
        pastes=sum(e["placed"] for e in done),
    )


def load_sample(out: str | Path, entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read back (rgb, gt, instances) of one manifest entry."""
    from PIL import Image

    from anomseg.synth.imageio import read_label, read_rgb

    root = Path(out)
    rgb = read_rgb(root / entry["outputs"]["image"])
    gt = read_label(root / entry["outputs"]["gt"])
    with Image.open(root / entry["outputs"]["instances"]) as im:
        inst = np.asarray(im).astype(np.uint16)
    return rgb, gt, inst


__all__ = [
    "MANIFEST",
    "ExportSummary",
    "export",
    "load_sample",
    "output_name",
    "output_paths",
    "plan",
    "plan_entry",
    "read_manifest",
    "write_sample",
]
