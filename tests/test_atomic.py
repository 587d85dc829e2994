"""anomseg.atomic: a failed write leaves the old file and no temporary; pairs replace together."""

from __future__ import annotations

import os
import stat
import threading

import pytest
import torch

from anomseg.atomic import TMP_GLOB, atomic_paths, atomic_write
from anomseg.models.checkpoints import save_checkpoint, sidecar_path


def _leftovers(folder):
    return sorted(p.name for p in folder.glob(TMP_GLOB))


def test_bytes_text_and_callback(tmp_path):
    p = tmp_path / "sub" / "a.bin"  # the folder is made
    atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write(p, "é\n")
    assert p.read_bytes() == "é\n".encode()
    atomic_write(p, lambda tmp: tmp.write_bytes(b"cb"), durable=False)
    assert p.read_bytes() == b"cb"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644  # readable by others, unlike mkstemp's 0600
    assert _leftovers(p.parent) == []


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "results.json"
    p.write_text("old")

    def torn(tmp):
        tmp.write_text("half of the ne")  # part of the new content is on disk ...
        raise RuntimeError("disk full")  # ... when the writer fails

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, torn)
    assert p.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_interrupt_is_cleaned_too(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"old")

    def interrupted(tmp):
        tmp.write_bytes(b"new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, interrupted)
    assert p.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_writer_that_writes_nothing_fails_and_keeps_old(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        atomic_write(p, lambda tmp: None)
    assert p.read_bytes() == b"old"


def test_pair_replaces_none_when_the_second_write_fails(tmp_path):
    a, b = tmp_path / "w.safetensors", tmp_path / "w.json"
    a.write_bytes(b"old weights")
    b.write_text("old meta")
    with pytest.raises(ValueError):
        with atomic_paths(a, b) as (ta, tb):
            ta.write_bytes(b"new weights")
            raise ValueError("metadata not serialisable")
    assert a.read_bytes() == b"old weights" and b.read_text() == "old meta"
    assert _leftovers(tmp_path) == []


def test_checkpoint_failure_keeps_old_checkpoint_and_sidecar(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint({"w": torch.ones(2)}, path, {"v": 1})
    before = (path.read_bytes(), sidecar_path(path).read_text())
    with pytest.raises(Exception, match="JSON"):
        save_checkpoint({"w": torch.zeros(2)}, path, {"v": object()})
    assert (path.read_bytes(), sidecar_path(path).read_text()) == before
    assert _leftovers(tmp_path) == []


def test_concurrent_writers_never_show_a_torn_file(tmp_path):
    p = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    atomic_write(p, payloads[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read():
        while not stop.is_set():
            data = p.read_bytes()
            seen.add(data[:1] + data[-1:] + len(data).to_bytes(4, "big"))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [
        threading.Thread(target=lambda d=d: [atomic_write(p, d, durable=False) for _ in range(5)])
        for d in payloads
    ]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    whole = {d[:1] + d[-1:] + len(d).to_bytes(4, "big") for d in payloads}
    assert seen <= whole  # every read saw one writer's whole file
    assert _leftovers(tmp_path) == []
