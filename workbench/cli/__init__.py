"""The ``anomseg`` command: the composition root.

Each sub-command lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``;
adding a command is one module plus one line in ``COMMANDS``. Modules import heavy libraries
(torch, db, gradio) inside ``run`` so that ``anomseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from anomseg.errors import AnomsegError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("workbench.cli.eval_cmd", "evaluate models x methods on anomaly benchmarks"),
    "methods": ("workbench.cli.methods_cmd", "list scoring methods and their parameters"),
    "models": ("workbench.cli.models_cmd", "list model architectures and registered models"),
    "synth": ("workbench.cli.synth_cmd", "render synthetic anomaly pastes from a YAML config"),
    "demo": ("workbench.cli.demo_cmd", "build the built-in world's data / re-train its models"),
    "db": ("workbench.cli.db_cmd", "database: upgrade, backup, restore, export, import"),
    "train": ("workbench.cli.train_cmd", "train an anomaly head from the store"),
    "recipe": ("workbench.cli.recipe_cmd", "reproduce the real-data table (recipe real)"),
    "worker": ("workbench.cli.worker_cmd", "run the background job worker"),
    "serve": ("workbench.cli.serve_cmd", "start the dashboard"),
    "add-dataset": ("workbench.cli.register_cmd", "register a benchmark or training dataset"),
    "add-model": ("workbench.cli.register_cmd", "register a model checkpoint"),
    "export-scores": (
        "workbench.cli.export_cmd",
        "write score maps per image and method (official SegmentMeIfYouCan layout or .npy)",
    ),
    "add-synthetic": (
        "workbench.cli.synthetic_cmd",
        "create / fill a synthetic dataset: real backgrounds x COCO objects, stored pastes",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (modname, help_) in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:  # command not built yet in this checkout
            if exc.name == modname:
                continue
            raise
        p = sub.add_parser(name, help=help_, description=help_)
        adder = getattr(mod, f"add_arguments_{name.replace('-', '_')}", None) or mod.add_arguments
        adder(p)
        runner = getattr(mod, f"run_{name.replace('-', '_')}", None) or mod.run
        p.set_defaults(_run=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except AnomsegError as exc:
        print(f"anomseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
