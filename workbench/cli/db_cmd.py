"""``anomseg db``: upgrade / current / backup / restore / export / import / check the store."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of ``anomseg db``."""
    where = argparse.ArgumentParser(add_help=False)
    g = where.add_mutually_exclusive_group()
    g.add_argument("--workspace", help="workspace folder holding anomseg.sqlite")
    g.add_argument("--url", help="database URL (sqlite:///... or postgresql+psycopg2://...)")
    sub = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    sub.add_parser("upgrade", parents=[where], help="create / upgrade the schema to the newest")
    sub.add_parser("current", parents=[where], help="print the schema revision")
    p = sub.add_parser("backup", parents=[where], help="online backup of a SQLite store")
    p.add_argument("out", help="backup file to write (or a folder for a dated file)")
    p = sub.add_parser("restore", parents=[where], help="replace the store with a backup")
    p.add_argument("src", metavar="IN", help="backup file")
    p = sub.add_parser("export", parents=[where], help="flags + paste records to JSON/PNG")
    p.add_argument("dir", help="new or empty folder")
    p = sub.add_parser("import", parents=[where], help="import an export folder")
    p.add_argument("dir", help="folder written by 'anomseg db export'")
    p = sub.add_parser(
        "check", parents=[where], help="list corrupt rows (flag masks, paste JSON) by id"
    )
    p.add_argument(
        "--fix",
        action="store_true",
        help="delete corrupt flags, turn corrupt paste revisions into removals, clear bad caches",
    )


def run(args: argparse.Namespace) -> int:
    """Run one ``anomseg db`` action."""
    from db import migrate, transfer
    from db.engine import resolve_url, sqlite_path
    from db.store import Store

    url = resolve_url(args.url, args.workspace)
    action = args.db_command
    if action == "current":
        path = sqlite_path(url)
        if path is not None and not path.is_file():
            print(f"(no database at {path}; 'anomseg db upgrade' creates it)")
            return 0
        with Store(url) as store:
            rev = migrate.current(store)
        head = migrate.head_revision()
        print(f"{rev or '(empty)'}{' (head)' if rev == head else f' (head is {head})'}")
        return 0
    # everything else may create the database; upgrade first so old stores keep working
    path = sqlite_path(url)
    if path is not None and action in ("upgrade", "import"):
        path.parent.mkdir(parents=True, exist_ok=True)
    with Store(url) as store:
        if action == "upgrade":
            before = migrate.current(store)
            after = migrate.upgrade(store)
            print(f"upgraded {before or '(empty)'} -> {after}")
        elif action == "backup":
            print(f"backup written to {transfer.backup(store, args.out)}")
        elif action == "restore":
            safety = transfer.restore(store, args.src)
            if safety is not None:
                print(f"previous database kept as {safety}")
            print(f"restored {args.src} (schema {migrate.current(store)})")
        elif action == "export":
            migrate.upgrade(store)
            counts = transfer.export_dir(store, args.dir)
            print(f"exported to {args.dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            if counts.get("quarantined"):
                print(
                    f"skipped {counts['quarantined']} corrupt row(s), listed in "
                    f"{args.dir}/quarantined.json ('anomseg db check --fix' repairs them)"
                )
        elif action == "import":
            migrate.upgrade(store)
            counts = transfer.import_dir(store, args.dir)
            print(f"imported {args.dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        elif action == "check":
            return _check(store, args.fix)
    return 0


def _check(store, fix: bool) -> int:
    """List the quarantined rows (exit 1 while any remain); ``fix`` repairs or deletes them."""
    from db import integrity, migrate

    migrate.upgrade(store)
    with store.read() as s:
        problems = integrity.check_store(s)
    for p in problems:
        print(p.line())
    if fix and problems:
        for line in store.transact(lambda s: integrity.fix_problems(s, problems)):
            print(line)
        with store.read() as s:
            problems = integrity.check_store(s)
    print(f"{len(problems)} corrupt row(s)" if problems else "no corrupt rows")
    return 1 if problems else 0
