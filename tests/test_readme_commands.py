"""The README's newcomer path works verbatim: its marked command block runs in a fresh clone with
no ``../shared`` next to it, prints the figures the README quotes, and writes nothing inside the
package; ``anomseg serve``'s first-run progress goes to a log file once per step."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- newcomer-commands:begin -->", "<!-- newcomer-commands:end -->"


def newcomer_commands(readme: str) -> list[str]:
    """The shell commands of the README's marked block (comments dropped)."""
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    body = re.search(r"```bash\n(.*?)```", block, flags=re.S)
    assert body, "the newcomer block holds no ```bash fence"
    return [ln for ln in body.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_the_block_is_found_and_needs_no_shared_data():
    cmds = newcomer_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert [c.split()[1] for c in cmds] == ["models", "demo", "eval", "synth"]
    assert not any("../shared" in c for c in cmds)


@pytest.mark.slow
def test_readme_newcomer_commands_run_verbatim_in_a_fresh_clone(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("git and a git checkout are needed to make the fresh clone")
    clone = tmp_path / "clone"  # tmp_path/shared does not exist: no ../shared for the clone
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    cmds = newcomer_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if k not in ("ANOMSEG_WORKSPACE", "ANOMSEG_DB_URL", "ANOMSEG_SHARED")
    }
    outputs = []
    for cmd in cmds:
        argv = shlex.split(cmd, comments=True)
        assert argv[0] == "anomseg", cmd
        res = subprocess.run(
            [sys.executable, "-m", "workbench", *argv[1:]],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        outputs.append(res.stdout)
    # the evaluation prints the README's figures (demo-anomalies, demo ERFNet)
    table = outputs[2]
    for method, auprc in (("entropy", "83.83"), ("maxlogit", "80.98"), ("msp", "70.32")):
        row = next(ln for ln in table.splitlines() if re.match(rf"demo-anomalies\s+{method}\s", ln))
        assert row.split()[2] == auprc, row
    # synth wrote 8 backgrounds into ./synth_out of the folder it ran in
    manifest = clone / "synth_out" / "manifest.jsonl"
    assert len(manifest.read_text().splitlines()) == 8
    # nothing was written into the package (or anywhere tracked): only the two output folders
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    new = sorted({ln[3:].split("/")[0] for ln in status if ln.strip()})
    assert new == ["demo-data", "synth_out"], new


@pytest.mark.slow
def test_serve_first_run_logs_each_progress_step_once(tmp_path, capfd):
    from workbench.cli.serve_cmd import prepare_workspace
    from workbench.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    try:
        prepare_workspace(ws, demo=True, demo_size="tiny", evaluate=False, quiet=False)
    finally:
        ws.close()
    err = capfd.readouterr().err
    # tqdm writing to a file: one record per update, separated by carriage returns
    steps = [s.strip() for s in err.replace("\r", "\n").splitlines() if "%|" in s]
    counts = Counter(steps)
    assert len(steps) >= 5
    assert max(counts.values()) == 1, counts.most_common(3)
