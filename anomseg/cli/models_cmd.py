"""``anomseg models``: list the registered architectures."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``anomseg models``."""
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    """Print name, default input size, classes, parameter count and description per model."""
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
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':<22} {'input':>10} {'classes':>8} {'params':>9}  description"
    print(header)
    print("-" * len(header))
    for r in rows:
        params = f"{r['params'] / 1e6:.1f}M"
        print(
            f"{r['name']:<22} {r['input_size']:>10} {r['classes']!s:>8} {params:>9}  "
            f"{r['description']}"
        )
    return 0
