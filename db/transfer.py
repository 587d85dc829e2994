"""Data safety: SQLite backup / restore, and export / import of flags and paste records.

* ``backup`` uses SQLite's online backup API (consistent while other processes write) and leaves
  a self-contained single file (rollback journal, not WAL).
* ``restore`` validates the file (SQLite, passes ``quick_check``, an anomseg schema at a revision
  this code knows), keeps a copy of the current database next to it, then copies the backup in
  with the backup API, which replaces the content in one locked step while other connections stay
  valid; finally it upgrades to the newest schema.
* ``export_dir`` writes plain files (JSON + 1-bit PNG masks) that ``import_dir`` turns back into
  the same rows: flags and samples keep their ``uid``, times, revisions and current pointers, so
  export -> import -> export gives identical files. Import is one transaction and skips rows whose
  uid already exists (re-importing is harmless).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from anomseg.atomic import atomic_paths
from anomseg.errors import InputError
from db.catalog import add_image, register_dataset
from db.engine import sqlite_path
from db.masks import bbox_of, encode_mask, mask_from_png, mask_to_png
from db.models import (
    FLAG_KINDS,
    SAMPLE_STATUSES,
    Dataset,
    Flag,
    Image,
    Model,
    Paste,
    PasteRevision,
    SyntheticSample,
    check_uid,
    dump_json,
)
from db.store import Store

EXPORT_FORMAT = "anomseg-export"
EXPORT_VERSION = 1
REQUIRED_TABLES = ("alembic_version", "datasets", "images", "models", "flags", "pastes")


def _db_file(store: Store) -> Path:
    path = sqlite_path(store.engine.url)
    if path is None:
        raise InputError(
            "backup / restore work on a SQLite store; for PostgreSQL use pg_dump / pg_restore"
        )
    return path


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def backup(store: Store, out: str | os.PathLike) -> Path:
    """Copy the live SQLite database to ``out`` (a file, or a folder to put a dated file in)."""
    src_path = _db_file(store)
    if not src_path.is_file():
        raise InputError(f"database {src_path} does not exist; nothing to back up")
    out_path = Path(out)
    if out_path.is_dir():
        out_path = out_path / f"anomseg-{_stamp()}.sqlite"
    if out_path.exists():
        raise InputError(f"backup target {out_path} already exists; choose a new name")
    if not out_path.parent.is_dir():
        raise InputError(f"backup folder {out_path.parent} does not exist")
    with atomic_paths(out_path) as (tmp,):
        src = sqlite3.connect(src_path, timeout=30)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            ok = dst.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise InputError(f"backup of {src_path} failed its integrity check: {ok}")
        finally:
            dst.close()
            src.close()
    return out_path


def validate_backup(path: str | os.PathLike, label: str | os.PathLike | None = None) -> str:
    """Check that ``path`` is an anomseg SQLite database; return its schema revision.

    ``label`` is the name used in messages (the user's file when ``path`` is a private copy).
    """
    from db.migrate import known_revisions

    p = Path(path)
    name = label if label is not None else p
    if not p.is_file():
        raise InputError(f"{name} does not exist")
    with open(p, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise InputError(f"{name} is not a SQLite database")
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            missing = [t for t in REQUIRED_TABLES if t not in tables]
            rev = None
            if "alembic_version" in tables:
                row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                rev = row[0] if row else None
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{name} is not a readable SQLite database ({exc})") from None
    if ok != "ok":
        raise InputError(f"{name} fails SQLite's integrity check: {ok}")
    if missing:
        raise InputError(
            f"{name} is not an anomseg database (missing tables: {', '.join(missing)})"
        )
    known = known_revisions()
    if rev not in known:
        raise InputError(
            f"{name} has schema revision {rev!r}, which this anomseg does not know "
            f"(known: {', '.join(known)}); is it from a newer version?"
        )
    return rev


def restore(store: Store, src: str | os.PathLike) -> Path | None:
    """Replace the store's content with a validated backup; returns the safety copy's path."""
    from db.migrate import upgrade

    live = _db_file(store)
    src_path = Path(src)
    # validate a private copy: the input may be in WAL mode or still being written
    with tempfile.TemporaryDirectory(dir=live.parent) as td:
        copy = Path(td) / "restore.sqlite"
        if not src_path.is_file():
            raise InputError(f"backup {src_path} does not exist")
        shutil.copyfile(src_path, copy)
        wal = Path(f"{src_path}-wal")
        if wal.is_file():
            shutil.copyfile(wal, f"{copy}-wal")
        validate_backup(copy, label=src_path)
        safety = None
        if live.is_file():
            safety = backup(store, live.parent / f"{live.stem}.before-restore-{_stamp()}.sqlite")
        store.engine.dispose()
        srcc = sqlite3.connect(copy)
        dst = sqlite3.connect(live, timeout=30)
        try:
            srcc.execute("PRAGMA journal_mode = DELETE")  # page copy must not carry WAL state
            srcc.backup(dst)
            dst.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as exc:
            raise InputError(f"restoring {src_path} into {live} failed: {exc}") from None
        finally:
            dst.close()
            srcc.close()
    upgrade(store.engine)
    return safety


# ---------------------------------------------------------------- export / import


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat()


def _parse_dt(value: Any, where: str) -> datetime:
    try:
        dt = datetime.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"{where}: {value!r} is not an ISO date-time") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def export_dir(store: Store, out: str | os.PathLike) -> dict[str, int]:
    """Write datasets, models, flagged images, flags (+ PNG masks) and samples to ``out``."""
    from db.migrate import current

    out_path = Path(out)
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        raise InputError(f"export folder {out_path} exists and is not empty")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}-", dir=out_path.parent))
    try:
        (tmp / "masks").mkdir()
        with store.read() as s:
            counts, quarantined = _export(s, tmp)
        if quarantined:  # one corrupt row is left out with a note, never aborts the export
            _write_json(tmp / "quarantined.json", quarantined)
            counts["quarantined"] = len(quarantined)
        _write_json(
            tmp / "manifest.json",
            {
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "schema_revision": current(store.engine),
                "counts": counts,
            },
        )
        if out_path.exists():
            out_path.rmdir()
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return counts


def _export(s: Session, tmp: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    from db.integrity import flag_problem, json_problem

    quarantined: list[dict[str, Any]] = []
    datasets = list(s.scalars(select(Dataset).order_by(Dataset.name)))
    ds_name = {d.id: d.name for d in datasets}
    models = list(s.scalars(select(Model).order_by(Model.name)))
    model_name = {m.id: m.name for m in models}
    flags = []
    for f in s.scalars(select(Flag).order_by(Flag.uid)):
        why = flag_problem(f)
        if why is None:
            flags.append(f)
        else:
            quarantined.append({"table": "flags", "id": f.id, "uid": f.uid, "reason": why})
    image_ids = sorted({f.image_id for f in flags})
    images = list(s.scalars(select(Image).where(Image.id.in_(image_ids)))) if image_ids else []
    img = {i.id: i for i in images}

    _write_json(
        tmp / "datasets.json",
        [
            {
                "name": d.name,
                "role": d.role,
                "root": d.root,
                "layout": d.layout,
                "label_remap": d.label_remap,
                "created": _iso(d.created),
            }
            for d in datasets
        ],
    )
    _write_json(
        tmp / "models.json",
        [
            {
                "name": m.name,
                "architecture": m.architecture,
                "checkpoint_path": m.checkpoint_path,
                "checkpoint_sha256": m.checkpoint_sha256,
                "input_size": [m.input_h, m.input_w] if m.input_h else None,
                "meta": m.meta,
                "created": _iso(m.created),
            }
            for m in models
        ],
    )
    _write_json(
        tmp / "images.json",
        sorted(
            (
                {
                    "dataset": ds_name[i.dataset_id],
                    "path": i.path,
                    "sha256": i.sha256,
                    "width": i.width,
                    "height": i.height,
                }
                for i in images
            ),
            key=lambda r: (r["dataset"], r["path"]),
        ),
    )
    flag_rows = []
    for f in flags:
        mask_file = f"masks/{f.uid}.png"
        (tmp / mask_file).write_bytes(mask_to_png(f.decoded_mask()))
        i = img[f.image_id]
        flag_rows.append(
            {
                "uid": f.uid,
                "dataset": ds_name[i.dataset_id],
                "image": i.path,
                "image_sha256": i.sha256,
                "model": model_name[f.model_id],
                "method": f.method,
                "kind": f.kind,
                "area": f.area,
                "bbox": list(f.bbox),
                "mask": mask_file,
                "author": f.author,
                "note": f.note,
                "created": _iso(f.created),
                "updated": _iso(f.updated),
            }
        )
    _write_json(tmp / "flags.json", flag_rows)

    samples = list(s.scalars(select(SyntheticSample).order_by(SyntheticSample.uid)))
    sample_rows = []
    n_rev = 0
    for sm in samples:
        pastes = []
        for p in sm.pastes:
            bad = [(r, json_problem(r, "record")) for r in p.revisions]
            bad = [(r, why) for r, why in bad if why]
            if bad:  # the whole paste: a history with a hole in it would not import
                quarantined += [
                    {"table": "paste_revisions", "id": r.id, "sample": sm.uid, "reason": why}
                    for r, why in bad
                ]
                continue
            revs = [
                {
                    "number": r.number,
                    "parent": r.parent_number,
                    "record": r.record,
                    "content_hash": r.content_hash,
                    "author": r.author,
                    "created": _iso(r.created),
                }
                for r in p.revisions
            ]
            n_rev += len(revs)
            pastes.append({"key": p.key, "current": p.current_number, "revisions": revs})
        sample_rows.append(
            {
                "uid": sm.uid,
                "dataset": ds_name[sm.dataset_id],
                "background_id": sm.background_id,
                "seed": sm.seed,
                "status": sm.status,
                "render": _render_or_note(sm, quarantined),
                "created": _iso(sm.created),
                "updated": _iso(sm.updated),
                "pastes": pastes,
            }
        )
    _write_json(tmp / "samples.json", sample_rows)
    return {
        "datasets": len(datasets),
        "models": len(models),
        "images": len(images),
        "flags": len(flags),
        "samples": len(samples),
        "paste_revisions": n_rev,
    }, quarantined


def _render_or_note(sm: SyntheticSample, quarantined: list[dict[str, Any]]) -> Any:
    """A sample's render cache, or None (noted) when it does not parse: it is only a cache."""
    from db.integrity import json_problem

    why = json_problem(sm, "render")
    if why:
        quarantined.append(
            {"table": "synthetic_samples", "id": sm.id, "uid": sm.uid, "reason": why}
        )
        return None
    return sm.render


def _load(folder: Path, name: str) -> list[dict[str, Any]]:
    p = folder / name
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"export folder {folder} has no {name}") from None
    except ValueError as exc:
        raise InputError(f"{p} is not valid JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise InputError(f"{p} must hold a JSON list of objects")
    return data


def _get(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise InputError(f"{where}: missing field {key!r}")
    val = obj[key]
    if not isinstance(val, typ) or (isinstance(val, bool) and typ is int):
        raise InputError(f"{where}: field {key!r} has the wrong type ({type(val).__name__})")
    return val


def import_dir(store: Store, folder: str | os.PathLike) -> dict[str, int]:
    """Import an export folder in one transaction; rows whose uid exists are skipped."""
    src = Path(folder)
    if not src.is_dir():
        raise InputError(f"export folder {src} does not exist")
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{src}/manifest.json is missing or not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise InputError(f"{src} is not an anomseg export (manifest format)")
    if manifest.get("version") != EXPORT_VERSION:
        raise InputError(f"{src}: export version {manifest.get('version')!r} is not supported")
    data = {
        n: _load(src, f"{n}.json") for n in ("datasets", "models", "images", "flags", "samples")
    }
    with store.session() as s:
        return _import(s, src, data)


def _import(s: Session, src: Path, data: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    counts = dict.fromkeys(("flags", "flags_skipped", "samples", "samples_skipped"), 0)
    ds_by_name: dict[str, Dataset] = {}
    for n, d in enumerate(data["datasets"]):
        where = f"datasets.json[{n}]"
        name = _get(d, "name", str, where)
        ds = s.scalar(select(Dataset).where(Dataset.name == name))
        if ds is None:
            ds = register_dataset(
                s,
                name,
                _get(d, "role", str, where),
                _get(d, "root", str, where),
                d.get("layout") or "",
                d.get("label_remap"),
                check_root=False,
            )
            if d.get("created"):
                ds.created = _parse_dt(d["created"], where)
        elif ds.role != d.get("role"):
            raise InputError(
                f"{where}: dataset {name!r} has role {ds.role!r} here but {d.get('role')!r} "
                "in the export; refusing to mix them"
            )
        ds_by_name[name] = ds
    model_by_name: dict[str, Model] = {}
    for n, m in enumerate(data["models"]):
        where = f"models.json[{n}]"
        name = _get(m, "name", str, where)
        mod = s.scalar(select(Model).where(Model.name == name))
        if mod is None:
            size = m.get("input_size")
            mod = Model(
                name=name,
                architecture=_get(m, "architecture", str, where),
                checkpoint_path=m.get("checkpoint_path"),
                checkpoint_sha256=m.get("checkpoint_sha256"),
                input_h=size[0] if size else None,
                input_w=size[1] if size else None,
            )
            mod.meta = m.get("meta")
            if m.get("created"):
                mod.created = _parse_dt(m["created"], where)
            s.add(mod)
            s.flush()
        model_by_name[name] = mod
    img_by_key: dict[tuple[str, str], Image] = {}
    for n, i in enumerate(data["images"]):
        where = f"images.json[{n}]"
        dsn, path = _get(i, "dataset", str, where), _get(i, "path", str, where)
        if dsn not in ds_by_name:
            raise InputError(f"{where}: dataset {dsn!r} is not in datasets.json")
        ds = ds_by_name[dsn]
        sha = _get(i, "sha256", str, where)
        existing = s.scalar(select(Image).where(Image.dataset_id == ds.id, Image.path == path))
        if existing is not None and existing.sha256 != sha:
            raise InputError(
                f"{where}: image {dsn}/{path} has different content here (sha256 "
                f"{existing.sha256[:12]}...) than in the export ({sha[:12]}...)"
            )
        img_by_key[(dsn, path)] = existing or add_image(
            s, ds, path, sha, _get(i, "width", int, where), _get(i, "height", int, where)
        )

    for n, f in enumerate(data["flags"]):
        where = f"flags.json[{n}]"
        uid = check_uid(_get(f, "uid", str, where), f"{where}: uid")
        if s.scalar(select(Flag.id).where(Flag.uid == uid)) is not None:
            counts["flags_skipped"] += 1
            continue
        key = (_get(f, "dataset", str, where), _get(f, "image", str, where))
        if key not in img_by_key:
            raise InputError(f"{where}: image {key[0]}/{key[1]} is not in images.json")
        image = img_by_key[key]
        model = model_by_name.get(_get(f, "model", str, where))
        if model is None:
            raise InputError(f"{where}: model {f['model']!r} is not in models.json")
        mask_rel = _get(f, "mask", str, where)
        mask_path = (src / mask_rel).resolve()
        if src.resolve() not in mask_path.parents:
            raise InputError(f"{where}: mask path {mask_rel!r} leaves the export folder")
        try:
            png = mask_path.read_bytes()
        except OSError as exc:
            raise InputError(f"{where}: cannot read mask {mask_rel}: {exc.strerror}") from None
        mask = mask_from_png(png, what=f"{where} mask {mask_rel}")
        if mask.shape != (image.height, image.width):
            raise InputError(
                f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, image is "
                f"{image.width}x{image.height}"
            )
        area = int(mask.sum())
        if area != _get(f, "area", int, where) or area == 0:
            raise InputError(f"{where}: mask has {area} pixels, the export says {f['area']}")
        flag = Flag(
            uid=uid,
            image_id=image.id,
            model_id=model.id,
            method=_get(f, "method", str, where)[:200],
            kind=_get(f, "kind", str, where),
            mask=encode_mask(mask),
            width=image.width,
            height=image.height,
            area=area,
            author=str(f.get("author") or "")[:100],
            note=str(f.get("note") or ""),
            created=_parse_dt(_get(f, "created", str, where), where),
            updated=_parse_dt(_get(f, "updated", str, where), where),
        )
        flag.bbox_x0, flag.bbox_y0, flag.bbox_x1, flag.bbox_y1 = bbox_of(mask)
        if flag.kind not in FLAG_KINDS:
            raise InputError(f"{where}: flag kind {flag.kind!r} is unknown")
        s.add(flag)
        counts["flags"] += 1

    for n, sm in enumerate(data["samples"]):
        where = f"samples.json[{n}]"
        uid = check_uid(_get(sm, "uid", str, where), f"{where}: uid")
        if s.scalar(select(SyntheticSample.id).where(SyntheticSample.uid == uid)) is not None:
            counts["samples_skipped"] += 1
            continue
        if sm.get("status") not in SAMPLE_STATUSES:
            raise InputError(f"{where}: sample status {sm.get('status')!r} is unknown")
        dsn = _get(sm, "dataset", str, where)
        if dsn not in ds_by_name:
            raise InputError(f"{where}: dataset {dsn!r} is not in datasets.json")
        sample = SyntheticSample(
            uid=uid,
            dataset_id=ds_by_name[dsn].id,
            background_id=_get(sm, "background_id", str, where),
            seed=sm.get("seed"),
            status=_get(sm, "status", str, where),
            created=_parse_dt(_get(sm, "created", str, where), where),
            updated=_parse_dt(_get(sm, "updated", str, where), where),
        )
        sample.render = sm.get("render")
        s.add(sample)
        s.flush()
        for k, p in enumerate(_get(sm, "pastes", list, where)):
            pw = f"{where}.pastes[{k}]"
            revs = _get(p, "revisions", list, pw)
            numbers = {_get(r, "number", int, pw) for r in revs}
            if len(numbers) != len(revs):
                raise InputError(f"{pw}: revision numbers repeat")
            cur = _get(p, "current", int, pw)
            if cur not in numbers:
                raise InputError(f"{pw}: current revision {cur} is not among its revisions")
            key = _get(p, "key", str, pw)
            if not 0 < len(key) <= 64:
                raise InputError(f"{pw}: paste key {key!r} must be 1..64 characters")
            paste = Paste(sample_id=sample.id, key=key, current_number=cur)
            s.add(paste)
            s.flush()
            for r in revs:
                rev = PasteRevision(
                    paste_id=paste.id,
                    number=r["number"],
                    parent_number=r.get("parent"),
                    content_hash=r.get("content_hash"),
                    author=str(r.get("author") or "")[:100],
                    created=_parse_dt(_get(r, "created", str, pw), pw),
                )
                record = r.get("record")
                if record is not None and not isinstance(record, dict):
                    raise InputError(f"{pw}: revision {r['number']} record is not an object")
                rev.record_json = None if record is None else dump_json(record)
                s.add(rev)
        counts["samples"] += 1
    s.flush()
    return counts
