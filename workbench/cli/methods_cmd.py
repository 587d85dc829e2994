"""``anomseg methods``: list the scoring methods, their parameters and what they need."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``anomseg methods``."""
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def _rows() -> list[dict]:
    from anomseg.scoring import list_scorers

    rows = []
    for s in list_scorers():
        rows.append(
            {
                "name": s.name,
                "label": s.label,
                "params": [
                    {
                        "name": p.name,
                        "default": p.default,
                        "min": p.min,
                        "max": p.max,
                        "help": p.help,
                    }
                    for p in s.params
                ],
                "needs": sorted(s.needs) + (["mask model"] if s.mask_only else []),
                "inverted": s.inverted,
                "description": s.description,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    """Print one row per scorer: name, parameters (default [min, max]), needs, description."""
    rows = _rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = []
    for r in rows:
        params = ", ".join(
            f"{p['name']}={p['default']:g} [{p['min']:g}, {p['max']:g}]" for p in r["params"]
        )
        table.append((r["name"], params or "-", ", ".join(r["needs"]), r["description"]))
    widths = [
        max(len(row[i]) for row in table + [("method", "parameters", "needs", "")])
        for i in range(3)
    ]
    header = ("method", "parameters", "needs", "description")
    lines = [header, tuple("-" * w for w in widths) + ("-" * 11,)] + table
    for row in lines:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    print("\nparameters are given after ':' in --methods, e.g. msp:T=2.0,energy:T=0.5")
    return 0
