"""Real-process faults: kill -9 of the training worker mid-epoch and of ``anomseg synth``
mid-export, then recovery; and uploads that try to escape the workspace's uploads folder.

The other parts of issue 7 (hostile files, concurrency, migration crash, backup, auth) are
covered by their own test files; this file holds what needs a real process to die.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomseg.errors import InputError

REPO = Path(__file__).resolve().parent.parent
TINY_TRAIN = {"epochs": 1, "steps_per_epoch": 2, "batch_pixels": 256}


def _env() -> dict[str, str]:
    # one thread per child: the machine is shared and the children only need to make progress
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root`` (hidden ones included)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ============================================================================ training worker


@pytest.fixture(scope="module")
def trained_ws(tmp_path_factory):
    """A tiny demo workspace whose demo-erfnet already has an active head (v1)."""
    from training.trainer import TrainConfig, train_head
    from workbench.bootstrap import DemoSizes, bootstrap_demo
    from workbench.models import frozen_model
    from workbench.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("ws"))
    tiny = {"n_train": 6, "n_heldout": 2, "n_obstacles": 2, "n_anomalies": 2, "size": (128, 256)}
    bootstrap_demo(ws, sizes=DemoSizes(**tiny, workers=1))
    out = train_head(
        ws.store, ws.root, frozen_model(ws.store, "demo-erfnet"), TrainConfig(**TINY_TRAIN),
        activate=True, evaluate=False,
    )  # fmt: skip
    assert out["active"]
    yield ws
    ws.close()


def _job(store, job_id: int) -> dict:
    from db.jobs import get_job

    with store.read() as s:
        j = get_job(s, job_id)
        return {"status": j.status, "progress": j.progress, "message": j.message, "error": j.error}


def _heads(store, model: str) -> list[dict]:
    from db.catalog import get_model
    from db.heads import list_head_versions

    with store.read() as s:
        mid = get_model(s, model).id
        return [
            {
                "id": h.id,
                "version": h.version,
                "status": h.status,
                "active": bool(h.active),
                "job_id": h.job_id,
                "path": h.checkpoint_path,
                "sha": h.checkpoint_sha256,
            }
            for h in list_head_versions(s, mid)
        ]


def _assert_heads_dir_complete(heads_dir: Path, heads: list[dict]) -> None:
    """Only complete checkpoints of ready versions (and their JSON sidecars) are on disk."""
    from anomseg.models.heads import load_head

    ready = [h for h in heads if h["status"] == "ready"]
    expected = set()
    for h in ready:
        ckpt = Path(h["path"])
        expected |= {ckpt.resolve(), ckpt.with_name(ckpt.stem + ".json").resolve()}
        assert _sha256(ckpt) == h["sha"], f"{ckpt} differs from the digest recorded in the store"
        load_head(ckpt, kind="stats", model="demo-erfnet")  # raises on a torn or foreign file
    on_disk = {p.resolve() for p in heads_dir.rglob("*") if p.is_file()}
    # no temporary file, no checkpoint of an unfinished version, nothing unaccounted for
    assert on_disk == expected, f"unexpected files: {sorted(map(str, on_disk - expected))}"


def _start_worker(root: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "workbench", "worker", "--workspace", str(root)]
    cmd += ["--poll", "0.1", "--heartbeat", "0.2", *extra]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)


def test_kill9_of_training_worker_mid_epoch_then_recovery_and_retrain(trained_ws, tmp_path):
    from workbench.jobs import enqueue_training

    ws, store = trained_ws, trained_ws.store
    before = _heads(store, "demo-erfnet")
    (v1,) = [h for h in before if h["active"]]

    # a job that cannot finish before the kill: 10^5 epochs of 50 steps
    long_job = enqueue_training(
        store,
        {
            "model": "demo-erfnet",
            "epochs": 100_000,
            "steps_per_epoch": 50,
            "batch_pixels": 256,
            "activate": True,
            "evaluate": False,
        },
    )
    log1 = tmp_path / "worker1.log"
    proc = _start_worker(ws.root, log1)
    try:
        deadline = time.monotonic() + 120
        while True:
            job = _job(store, long_job)
            if job["status"] == "running" and job["progress"] > 0.3 and "epoch" in job["message"]:
                break  # inside the training loop (progress 0.3..0.8 is the epochs)
            assert proc.poll() is None, f"worker exited early:\n{log1.read_text()}"
            assert time.monotonic() < deadline, f"no training progress: {job}\n{log1.read_text()}"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = time.monotonic()

    # the store as the dead worker left it: the job looks running, its head version unfinished
    assert _job(store, long_job)["status"] == "running"
    after_kill = _heads(store, "demo-erfnet")
    (orphan,) = [h for h in after_kill if h["job_id"] == long_job]
    assert orphan["status"] == "training" and not orphan["active"] and orphan["path"] is None
    assert [h["id"] for h in after_kill if h["active"]] == [v1["id"]]
    assert _sha256(Path(v1["path"])) == v1["sha"]
    _assert_heads_dir_complete(ws.heads_dir, after_kill)

    # a new worker fails the dead job (stale heartbeat) and then runs a fresh retrain
    params = {"model": "demo-erfnet", **TINY_TRAIN, "activate": True, "evaluate": False}
    retrain = enqueue_training(store, params)
    time.sleep(max(0.0, 1.5 - (time.monotonic() - killed_at)))
    log2 = tmp_path / "worker2.log"
    proc2 = _start_worker(ws.root, log2, "--once", "--stale-after", "1")
    try:
        assert proc2.wait(timeout=120) == 0, log2.read_text()
    finally:
        if proc2.poll() is None:
            proc2.kill()
            proc2.wait()
    dead = _job(store, long_job)
    assert dead["status"] == "failed" and "stopped" in dead["error"], dead
    assert _job(store, retrain)["status"] == "done", log2.read_text()

    final = _heads(store, "demo-erfnet")
    by_id = {h["id"]: h for h in final}
    # the dead job's version can never finish: recovery marks it failed, not 'training' forever
    assert by_id[orphan["id"]]["status"] == "failed"
    (new,) = [h for h in final if h["job_id"] == retrain]
    assert new["status"] == "ready" and new["active"] and new["id"] != v1["id"]
    assert new["version"] > orphan["version"] > v1["version"]
    assert not by_id[v1["id"]]["active"] and by_id[v1["id"]]["status"] == "ready"
    _assert_heads_dir_complete(ws.heads_dir, final)


# ============================================================================ synth export

N_SYNTH = 16


def _synth_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "synth.yaml"
    cfg.write_text(
        "seed: 3\n"
        f"backgrounds: {{source: procedural, options: {{start: 0, stop: {N_SYNTH}, "
        "size: [256, 512]}}\n"
        "objects: {source: bank}\n"
        "instances: {min: 1, max: 2}\n"
        "export: {out: unused, image_format: png}\n"
    )
    return cfg


def _synth(cfg: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "workbench", "synth", "--config", str(cfg), "--out", str(out)]
    cmd += ["--workers", "1", "--no-progress"]
    return subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _manifest_lines(out: Path) -> list[str]:
    path = out / "manifest.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def test_kill9_during_synth_then_rerun_matches_a_clean_run(tmp_path):
    cfg = _synth_config(tmp_path)
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"

    proc = _synth(cfg, killed)
    try:
        deadline = time.monotonic() + 60
        while len(_manifest_lines(killed)) < 2:  # two lines: the first one is surely whole
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "synth wrote nothing"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    done_before = len(_manifest_lines(killed))
    assert 2 <= done_before < N_SYNTH, "the kill must land mid-export for this test to mean much"
    # what a kill inside write_atomic leaves behind (mkstemp's name); the re-run must clear it
    (killed / "images" / ".procedural_99.png.k9x_ab.tmp").write_bytes(b"\x89PNG torn")

    rerun = _synth(cfg, killed)
    text = rerun.communicate(timeout=120)[0].decode()
    assert rerun.returncode == 0, text
    m = re.search(r"rendered (\d+), unchanged (\d+)", text)
    assert m, text
    rendered, unchanged = int(m[1]), int(m[2])
    assert rendered + unchanged == N_SYNTH
    # items finished before the kill are reused (a torn last line may be redone)
    assert unchanged >= done_before - 1 and unchanged >= 1

    single = _synth(cfg, fresh)
    text = single.communicate(timeout=120)[0].decode()
    assert single.returncode == 0, text

    ids = [json.loads(line)["background_id"] for line in _manifest_lines(killed)]
    assert ids == [f"procedural:{i}" for i in range(N_SYNTH)]  # one line each, no duplicate
    got, want = _tree(killed), _tree(fresh)
    assert sorted(got) == sorted(want)  # same files: nothing missing, no leftover temporary
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"files differ from a single clean run: {differ}"


# ============================================================================ uploads


@pytest.fixture
def svc(tmp_path):
    from dashboard.services import Services
    from workbench.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    yield Services(ws)
    ws.close()


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 32, 3), value, np.uint8)).save(path)
    return path


def _files(root: Path) -> set[Path]:
    return {p.resolve() for p in root.rglob("*") if p.is_file()}


def test_upload_names_cannot_escape_the_uploads_folder(svc, tmp_path):
    ws = svc.ws
    uploads = Path(ws.uploads_dir).resolve()
    nested = tmp_path / "client" / "a" / "b"
    nested.mkdir(parents=True)
    _png(tmp_path / "client" / "evil.png", 11)
    outside = _png(tmp_path / "abs" / "evil.png", 22)
    candidates = [
        str(nested) + "/../../evil.png",  # a client name with parent steps
        str(outside.resolve()),  # an absolute path somewhere else
        _png(nested / "..%2f..%2fevil.png", 33),  # an encoded traversal in the name itself
    ]
    all_before = _files(tmp_path)
    stored = []
    for c in candidates:
        image_id = svc.catalog.register_upload(c)
        _img, ds, path = svc.catalog.image_paths(image_id)
        path = path.resolve()
        # stored in a folder named by a hash of the pixels, under the client's name sanitised
        # to letters, digits, "_" and "-": no separator, dot or encoded step survives
        assert ds.name == "uploads" and path.parent.parent == uploads, path
        assert re.fullmatch(r"[0-9a-f]{32}", path.parent.name), path
        assert re.fullmatch(r"[A-Za-z0-9_-]+\.png", path.name) and ".." not in path.name
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(c)))
        stored.append(path)
    assert len(set(stored)) == 3
    new = _files(tmp_path) - all_before
    # the only new files anywhere under tmp_path are the stored uploads (+ the store's files)
    assert {p for p in new if p.is_relative_to(uploads)} == set(stored)
    assert all(p.is_relative_to(ws.root.resolve()) for p in new), new
    assert not [p for p in new if not p.is_relative_to(uploads) and p.suffix == ".png"]


def test_upload_of_a_non_image_by_absolute_path_writes_nothing(svc, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    before = _files(tmp_path)
    with pytest.raises(InputError):
        svc.catalog.register_upload(str(secret))
    assert _files(tmp_path) == before


@pytest.mark.parametrize("bad", ["../../evil", "/etc/passwd", "abc", "0123456789abcdeg"])
def test_stored_upload_name_accepts_only_a_hex_digest(bad):
    from dashboard.services.catalog import safe_upload_name

    with pytest.raises(InputError):
        safe_upload_name(bad)
    assert safe_upload_name("0123456789abcdef" * 4) == "0123456789abcdef" * 2 + ".png"
