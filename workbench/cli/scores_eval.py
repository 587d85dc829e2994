"""``anomseg eval --scores DIR --dataset D --name METHOD``: external score maps, our metrics, our store.

Maps produced elsewhere (another repository's method, a published submission) are found under
``DIR`` in either layout of ``anomseg.scoremaps`` (the official ``anomaly_p/<name>/<dataset>/``
HDF5 files, ``<name>/<dataset>/*.npy``, or ``DIR`` itself), checked frame by frame, evaluated by
the same ``DatasetEval`` as our own methods and recorded in the store as method ``METHOD`` of the
model row ``external`` (architecture ``external``), with the protocol card in the result's
params, so the Leaderboard and Compare put it beside ours. ``--no-record`` only prints/writes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from anomseg import settings
from anomseg.errors import InputError
from workbench.cli.eval_rows import check_out, format_table, parse_remap, write_rows

EXTERNAL_MODEL = "external"


def card_for(ds: Any, row: Any, folder: Path, metric_mode: str, skip: bool) -> dict[str, Any]:
    """The protocol card of an external result."""
    from anomseg.components import track_for
    from anomseg.protocol import card, dataset_sha256

    return card(
        input_size="external",
        score_size="label",
        skip_empty=skip,
        label_remap=ds.remap,
        metric_mode=metric_mode,
        track=track_for(ds.name),
        dataset_sha256=dataset_sha256(ds),
        source=f"scores:{folder.resolve()}",
    )


def record(store: Any, ds: Any, row: Any, folder: Path) -> int | None:
    """Store one external row (model row ``external``; the dataset found by its root, else
    registered as an eval set under its folder name). Returns the result id (None: no image
    was used, nothing to store)."""
    from db import catalog, results

    def write(s: Any) -> int | None:
        d = results.eval_dataset_for(s, ds)
        try:
            m = catalog.get_model(s, EXTERNAL_MODEL)
        except InputError:
            m = catalog.register_model(
                s, EXTERNAL_MODEL, "external", meta={"external": True, "note": "maps from outside"}
            )
        params = {
            "metric_mode": row.metric_mode,
            "scores_dir": str(folder.resolve()),
            "external": True,
        }
        stored = results.record_eval_rows(s, m.id, [row], {row.dataset: d.id}, params=params)
        return stored[0].id if stored else None

    return store.transact(write)


def run_scores(args: argparse.Namespace) -> int:
    """Validate, evaluate every dataset's maps, print, write, record."""
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.evaluate import check_metric_mode
    from anomseg.external import check_name, evaluate_maps
    from anomseg.scoremaps import find_map_folder

    name = check_name(args.name)
    check_metric_mode(args.metric_mode)
    out = check_out(args.out)
    root = Path(args.scores)
    if not root.is_dir():
        raise InputError(f"--scores {args.scores}: folder not found")
    if args.model is not None or args.checkpoint is not None:
        raise InputError("--scores evaluates maps made elsewhere; expected no --model/--checkpoint")
    remap = parse_remap(args.remap)
    datasets = [BenchmarkDataset(p, remap=remap) for p in args.dataset]
    rows = []
    for ds in datasets:
        folder = find_map_folder(root, name, ds.name)
        row = evaluate_maps(
            folder, ds, name, metric_mode=args.metric_mode,
            skip_without_anomaly=not args.all_images, progress=not args.no_progress,
        )  # fmt: skip
        row.protocol = card_for(ds, row, folder, args.metric_mode, not args.all_images)
        rows.append((ds, row, folder))
    print(format_table([r for _, r, _ in rows]))
    if out is not None:
        header = {"model": EXTERNAL_MODEL, "scores": str(root), "metric_mode": args.metric_mode,
                  "skip_without_anomaly": not args.all_images}  # fmt: skip
        write_rows(out, [r for _, r, _ in rows], header)
        print(f"wrote {len(rows)} rows to {out}")
    if not getattr(args, "no_record", False):
        from db.store import Store

        ws = settings.workspace_dir(getattr(args, "workspace", None))
        store = Store.open(url=getattr(args, "url", None), workspace=ws)
        try:
            ids = [i for ds, row, folder in rows if (i := record(store, ds, row, folder))]
        finally:
            store.close()
        print(f"recorded {len(ids)} result(s) as {EXTERNAL_MODEL} / {name} in the store ({ws})")
    return 0
