"""Rows of an evaluation, out: the printed table and the ``--out`` files (``.json`` with per-image
values, ``.csv`` one line per row; values as fractions, written atomically), and the options both
``anomseg eval`` paths read (a model's run and ``--scores`` maps)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from anomseg.atomic import atomic_write
from anomseg.errors import InputError

OUT_SUFFIXES = (".json", ".csv")
CSV_FIELDS = (
    "dataset", "method", "auprc", "fpr95", "auroc", "n_images", "n_skipped", "seconds",
    "forward_seconds", "method_seconds", "metric_mode", "model", "input_size",
    "siou", "ppv", "f1_mean", "component_threshold", "protocol",
)  # fmt: skip


def parse_remap(text: str | None) -> dict[int, int] | str:
    """'2=1,3=255' -> {2: 1, 3: 255}; None -> 'auto' (known dataset names)."""
    if text is None:
        return "auto"
    out: dict[int, int] = {}
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*[=:]\s*(\d+)\s*", item)
        if not m or int(m.group(1)) > 255 or int(m.group(2)) > 255:
            raise InputError(f"--remap {text!r}; expected pairs like 2=1 with values 0..255")
        out[int(m.group(1))] = int(m.group(2))
    return out


def check_out(path: str | None) -> Path | None:
    """Validate --out before any work is done."""
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise InputError(f"--out {path!r}; expected a file name ending in .json or .csv")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"--out {path!r}: folder {parent} does not exist")
    if out.is_dir():
        raise InputError(f"--out {path!r} is a directory; expected a file name")
    return out


def write_rows(path: Path, rows: list[Any], header: dict[str, Any]) -> None:
    """Write eval rows as JSON (with per-image values) or CSV (one line per row)."""
    if path.suffix.lower() == ".json":
        doc = {**header, "units": "fraction", "rows": [r.to_dict() for r in rows]}
        atomic_write(path, json.dumps(doc, indent=2) + "\n")
        return
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        d = r.to_dict(per_image=False)
        d.update(d.pop("components", None) or {})
        from anomseg.protocol import summary

        d["protocol"] = summary(d.get("protocol"))
        if d.get("input_size"):
            d["input_size"] = "x".join(map(str, d["input_size"]))
        w.writerow(d)
    atomic_write(path, buf.getvalue())


def _pct(v: float) -> str:
    return "   n/a" if v != v else f"{100 * v:6.2f}"


def _comp(row: Any, key: str) -> str:
    v = (getattr(row, "components", None) or {}).get(key)
    return "   n/a" if v is None else _pct(float(v))


def format_table(rows: list[Any]) -> str:
    """Plain-text table: dataset x method with AuPRC / FPR95 / AUROC in percent."""
    wd = max([7] + [len(r.dataset) for r in rows])
    wm = max([6] + [len(r.method) for r in rows])
    lines = [
        f"{'dataset':<{wd}}  {'method':<{wm}}  {'AuPRC%':>6}  {'FPR95%':>6}  {'AUROC%':>6}"
        f"  {'sIoU%':>6}  {'PPV%':>6}  {'F1%':>6}  {'images':>6}  {'seconds':>7}"
    ]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(
            f"{r.dataset:<{wd}}  {r.method:<{wm}}  {_pct(r.auprc)}  {_pct(r.fpr95)}  "
            f"{_pct(r.auroc)}  {_comp(r, 'siou')}  {_comp(r, 'ppv')}  {_comp(r, 'f1_mean')}  "
            f"{r.n_images:>6}  {r.seconds:>7.1f}"
        )
    return "\n".join(lines)
