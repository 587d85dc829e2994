"""``anomseg models``: the architectures, then the models registered in a workspace's store.

``anomseg train --model`` and ``anomseg eval --methods head:N`` take a *registered* model name
(``demo-erfnet``, or one added with ``anomseg add-model``), so both lists are shown. A workspace
that does not exist is reported, never created.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``anomseg models``."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--workspace",
        default=None,
        help="workspace whose registered models are listed (default $ANOMSEG_WORKSPACE or "
        "./workspace)",
    )
    parser.add_argument("--url", default=None, help="database URL instead of the workspace's")


def _architectures() -> list[dict]:
    from anomseg.models import count_parameters, get_model_entry, list_models

    rows = []
    for name in list_models():
        entry = get_model_entry(name)
        d = entry.defaults
        h, w = d.get("input_size", ("?", "?"))
        rows.append(
            {
                "name": name,
                "input_size": f"{h}x{w}",
                "classes": d.get("num_classes"),
                "params": count_parameters(name),  # built on the meta device: no memory, fast
                "description": entry.description,
            }
        )
    return rows


def _registered(workspace: Path, url: str | None) -> list[dict] | None:
    """Registered models of the store, or None when there is no workspace / database."""
    from anomseg.models import count_parameters
    from db import catalog
    from db.engine import DB_FILENAME
    from db.store import Store

    if url is None and not (workspace / DB_FILENAME).is_file():
        return None
    store = Store.open(url=url, workspace=workspace)
    try:
        with store.read() as s:
            models = [
                (m.name, m.architecture, m.input_h, m.input_w, m.checkpoint_path, m.meta or {})
                for m in catalog.list_models(s)
            ]
    finally:
        store.close()
    rows = []
    for name, arch, ih, iw, ckpt, meta in models:
        options = dict(meta.get("options") or {})
        build = {k: v for k, v in options.items() if k != "input_size"}
        try:
            n_params: int | None = count_parameters(arch, **build)
        except Exception:  # an architecture this checkout does not know: still list the row
            n_params = None
        rows.append(
            {
                "name": name,
                "architecture": arch,
                "input_size": f"{ih}x{iw}" if ih and iw else "",
                "options": {k: v for k, v in build.items() if k != "img_size"},
                "params": n_params,
                "checkpoint": ckpt or "",
            }
        )
    return rows


def _m(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f}M"


def run(args: argparse.Namespace) -> int:
    """Print the architecture registry and the workspace's registered models."""
    from db.engine import default_workspace

    workspace = Path(args.workspace) if args.workspace else default_workspace()
    archs = _architectures()
    registered = _registered(workspace, args.url)
    if args.json:
        print(json.dumps({"architectures": archs, "registered": registered or []}, indent=2))
        return 0
    header = f"{'architecture':<22} {'input':>10} {'classes':>8} {'params':>9}  description"
    print(header)
    print("-" * len(header))
    for r in archs:
        print(
            f"{r['name']:<22} {r['input_size']:>10} {r['classes']!s:>8} {_m(r['params']):>9}  "
            f"{r['description']}"
        )
    print()
    where = args.url or str(workspace)
    if registered is None:
        print(
            f"No workspace at {where}: registered models (what `anomseg train --model` takes) "
            "appear after `anomseg demo build --workspace DIR`, `anomseg serve` or "
            "`anomseg add-model`."
        )
        return 0
    print(f"Registered models in {where} (names for `anomseg train --model`):")
    header = f"{'model':<22} {'architecture':<20} {'input':>9} {'params':>8}  options · checkpoint"
    print(header)
    print("-" * len(header))
    for r in registered:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        print(
            f"{r['name']:<22} {r['architecture']:<20} {r['input_size']:>9} "
            f"{_m(r['params']):>8}  {opts + ' · ' if opts else ''}{r['checkpoint']}"
        )
    if not registered:
        print("(none yet: `anomseg add-model NAME --arch erfnet --checkpoint PATH`)")
    return 0
