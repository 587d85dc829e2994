"""Issue 15 §9: user errors end in one line naming the thing and what was expected, never a
traceback: a bad file read inside a DataLoader worker, an absurd --input-size, ``serve`` on a busy
port, and ids out of range or not whole numbers in dashboard forms."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomseg.errors import AnomsegError, InputError
from workbench.cli import main

DEMO = Path(__file__).resolve().parent.parent / "anomseg" / "assets" / "demo_models"


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and "Original" not in text, text
    return lines[0]


def test_a_bad_file_in_a_dataloader_worker_is_one_line(tmp_path):
    from anomseg.data.benchmark import BenchmarkDataset
    from anomseg.models import create_model
    from anomseg.predict import Predictor

    root = tmp_path / "bench"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 64, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.zeros((32, 64), np.uint8)).save(root / "labels_masks" / f"{i}.png")
    bad = root / "images" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated: read only inside the worker
    model = create_model("erfnet", checkpoint=DEMO / "demo-erfnet.safetensors", input_size=(32, 64))
    pred = Predictor(model, device="cpu", input_size=(32, 64))
    with pytest.raises(AnomsegError) as err:
        list(pred.predict_dataset(BenchmarkDataset(root), num_workers=1, use_cache=False))
    line = _one_line(str(err.value))
    assert line.startswith(str(bad)) and "truncated or corrupt" in line


@pytest.mark.parametrize("size", ["40000x80000", "20000x20000", "70000x10"])
def test_an_absurd_input_size_is_refused_with_its_limit(size, capsys):
    from workbench.cli.eval_cmd import parse_size

    with pytest.raises(InputError, match=r"limit"):
        parse_size(size)
    rc = main(["add-model", "m", "--arch", "erfnet", "--checkpoint", "x.pth", "--input-size", size])
    err = capsys.readouterr().err
    assert rc == 2 and size in _one_line(err)
    assert parse_size("1024x2048") == (1024, 2048)  # a real Cityscapes size still passes


def test_serve_on_a_busy_port_is_one_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rc = main(
            ["serve", "--port", str(port), "--workspace", str(tmp_path / "ws"), "--no-demo",
             "--no-worker"]
        )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    line = _one_line(err)
    assert f"port {port}" in line and "in use" in line and "--port" in line


@pytest.mark.parametrize(
    "value, expect",
    [(7, 7), (7.0, 7), ("12", 12), (None, None), (0, None), ("", None)],
)
def test_form_ids_accept_whole_numbers(value, expect):
    from dashboard.ui import form_id

    assert form_id(value, "image id") == expect


@pytest.mark.parametrize(
    "value, message",
    [
        (2**63, "out of range"),
        (-3, "out of range"),
        (1.5, "whole number"),
        ("1.5", "whole number"),
        (float("nan"), "whole number"),
        ("abc", "whole number"),
        (True, "whole number"),
    ],
)
def test_form_ids_refuse_the_rest_by_name(value, message):
    from dashboard.ui import form_id

    with pytest.raises(InputError, match=message) as err:
        form_id(value, "image id")
    assert str(err.value).startswith("image id")


def test_services_refuse_out_of_range_ids_with_a_message(tmp_path):
    from dashboard.services import Services
    from workbench.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    try:
        svc = Services(ws)
        for call in (
            lambda: svc.catalog.image_paths(2**63),
            lambda: svc.flags.delete_flag(2**63),
            lambda: svc.jobs.job_state(2**64),
        ):
            with pytest.raises(InputError, match="out of range"):
                call()
    finally:
        ws.close()
