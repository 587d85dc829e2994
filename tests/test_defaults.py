"""One set of defaults: the CLI, the Retrain tab's request and the first-run demo agree with their
single sources (TrainConfig, the demo data's counts); `anomseg models` lists registered models;
`anomseg train` stores head paths that work from any folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from workbench.cli import build_parser, main


def _defaults(argv: list[str]) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    return vars(args)


def test_anomseg_train_defaults_are_train_config_and_shown_in_help(capsys):
    from training.trainer import TrainConfig

    d = TrainConfig()
    got = _defaults(["train", "--model", "m"])
    # the CLI passes TrainConfig's own field defaults through (None where the recipe decides,
    # e.g. the learning rate), so `anomseg train` and TrainConfig() train the same way
    for f in dataclasses.fields(TrainConfig):
        if f.name in got:
            assert got[f.name] == f.default, f.name
    assert {"epochs", "lr", "fp_weight", "fn_weight", "pos_weight", "batch_pixels"} <= set(got)
    cli = TrainConfig(**{f.name: got[f.name] for f in dataclasses.fields(TrainConfig)
                         if f.name in got})  # fmt: skip
    assert (cli.lr, cli.epochs, cli.fp_weight) == (d.lr, d.epochs, d.fp_weight)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {d.fp_weight})" in help_text and f"(default: {d.epochs})" in help_text
    from training.recipes import RECIPES

    # the learning rate's default is the recipe's: --help names each recipe's value
    assert f"recipe's (default {d.lr:g}, seed {RECIPES.get('seed').lr:g})" in help_text


def test_the_retrain_tab_request_uses_train_config_defaults(tmp_path):
    from test_loop import build_world

    from dashboard.services import Services
    from db import jobs as dbjobs
    from training.trainer import TrainConfig

    store, _imgs, _ids = build_world(tmp_path, n_train=2, n_eval=1)

    class _WS:
        root = tmp_path
        cache_dir = tmp_path / "cache"
        uploads_dir = tmp_path / "uploads"

    ws = _WS()
    ws.store = store
    job = Services(ws).retrain.queue_retrain("colour", "stats", activate="never")
    with store.read() as s:
        p = dbjobs.get_job(s, job).params
    d = TrainConfig()
    assert (p["epochs"], p["lr"], p["fp_weight"]) == (d.epochs, d.lr, d.fp_weight)
    # and the tab's own widgets start from the same object
    from dashboard import retrain

    assert retrain.DEFAULTS == d
    store.close()


def test_demo_sizes_are_one_set_of_numbers():
    from anomseg.world.demo_data import DEFAULT_COUNTS
    from workbench.bootstrap import DemoSizes
    from workbench.cli.serve_cmd import DEMO_PRESETS

    got = _defaults(["demo", "build"])
    cli = {
        "train": got["train"],
        "heldout": got["heldout"],
        "demo-obstacles": got["obstacles"],
        "demo-anomalies": got["anomalies"],
    }
    assert cli == DEFAULT_COUNTS == {"train": 200, "heldout": 40, "demo-obstacles": 25,
                                     "demo-anomalies": 25}  # the README's numbers  # fmt: skip
    first_run = DemoSizes(**DEMO_PRESETS["full"])  # what `anomseg serve` builds on first run
    assert (
        first_run.n_train,
        first_run.n_heldout,
        first_run.n_obstacles,
        first_run.n_anomalies,
    ) == tuple(DEFAULT_COUNTS.values())
    assert first_run.size == tuple(got["size"])


def test_models_lists_registered_models_and_never_creates_a_workspace(tmp_path, capsys):
    from test_loop import build_world

    store, _imgs, _ids = build_world(tmp_path / "ws", n_train=1, n_eval=1)
    store.close()
    assert main(["models", "--workspace", str(tmp_path / "ws")]) == 0
    out = capsys.readouterr().out
    assert "erfnet" in out  # the architectures
    line = next(ln for ln in out.splitlines() if ln.startswith("colour "))
    assert "test_colour_net" in line and "32x64" in line
    missing = tmp_path / "nowhere"
    assert main(["models", "--workspace", str(missing)]) == 0
    assert "No workspace at" in capsys.readouterr().out
    assert not missing.exists()


def test_cli_train_stores_an_absolute_head_path(tmp_path, capsys):
    from test_loop import build_world

    from db import Store, heads

    build_world(tmp_path / "ws", n_train=3, n_eval=1)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        argv = ["train", "--model", "colour", "--workspace", "ws", "--epochs", "1"]
        argv += ["--steps-per-epoch", "3", "--batch-pixels", "128", "--device", "cpu", "--no-eval"]
        assert main(argv) == 0
    finally:
        os.chdir(cwd)
    capsys.readouterr()
    with Store.open(workspace=tmp_path / "ws") as store, store.read() as s:
        path = heads.get_head_version(s, 1, 1).checkpoint_path
    assert Path(path).is_absolute() and Path(path).is_file()
    assert Path(path).is_relative_to((tmp_path / "ws").resolve())
