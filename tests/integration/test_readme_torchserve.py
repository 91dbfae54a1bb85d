"""The README's TorchServe quick start, run command for command as written.

The block is copied out of ``README.md`` and run by bash (``-e``) in a copy of the checkout that
holds what git would check out (tracked and new files, none of the ignored build outputs: no
archives, keys, logs or caches). The copy shares this checkout's ``.venv`` (a symlink; its
editable install imports the same package files from this checkout), and the ONNX export cache
through ``SEPVIT_CACHE_DIR`` (exports are keyed by content), so the test does not reinstall or
re-export. The README's ports are fixed (8080, 7070, ...): the block runs in a
private network namespace (``unshare -rn``) where they are free by construction and invisible
to the rest of the machine. TorchServe's pid file lives in a private ``TMPDIR``, so its
``--stop`` stops this TorchServe only; whatever is left in the process group is killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sepvit.data.shapes import CLASSES
from tests.docs.readme_blocks import ROOT, clean_copy, section_block

pytestmark = pytest.mark.integration

SECTION = "TorchServe (optional backend)"
TIMEOUT = 480


def netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip", path=_path()) is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    return probe.returncode == 0


def json_objects(text: str) -> list[dict]:
    """The JSON objects that start a line (TorchServe pretty-prints its answers)."""
    decoder = json.JSONDecoder()
    found = []
    for m in re.finditer(r"^\{", text, re.M):
        with contextlib.suppress(ValueError):
            value, _ = decoder.raw_decode(text, m.start())
            if isinstance(value, dict):
                found.append(value)
    return found


def group_alive(pgid: int, grace: float) -> bool:
    """Whether a process of the group is still there after ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.5)


def _path() -> str:
    return f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


def test_readme_torchserve_commands_as_written(tmp_path: Path, torchserve_required: None) -> None:
    if not (ROOT / ".venv" / "bin" / "torchserve").is_file():
        pytest.fail("run through `make test`: the README's commands use .venv/bin/")
    if not netns_available():
        pytest.skip("needs a private network namespace (unshare -rn and ip) for fixed ports")
    block = section_block(SECTION)
    repo = clean_copy(tmp_path / "checkout")
    script = tmp_path / "readme_torchserve.sh"
    script.write_text(block.text)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {
        **os.environ,
        "PATH": _path(),
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "SEPVIT_CACHE_DIR": str(ROOT / ".cache"),
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    cmd = ["unshare", "-rn", "bash", "-c", 'ip link set lo up && exec bash -e "$0"', str(script)]
    output = tmp_path / "output.txt"  # a file, not a pipe: the java daemon inherits it
    with output.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=TIMEOUT)
            left_running = group_alive(proc.pid, grace=30)
        except subprocess.TimeoutExpired:
            left_running = True
        finally:  # the block's --stop should have stopped TorchServe: this is in case it did not
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = output.read_text(errors="replace")
    logs = "\n".join(p.read_text()[-3000:] for p in (repo / "logs").glob("*_log.log"))
    assert proc.returncode == 0, f"block at README.md:{block.line} failed:\n{text}\n{logs}"

    # the archives went into their own store, the sources folder holds none
    assert sorted(p.name for p in (repo / "archives").iterdir()) == [
        f"sepvit_lite_shapes_{t}.mar" for t in ("cls", "det", "inst", "seg")
    ]
    assert not list((repo / "model_store").glob("*.mar"))
    # the two answers, among TorchServe's own log lines (its stdout shares the file)
    answers = [a for a in json_objects(text) if {"top_k", "detections"} & set(a)]
    assert len(answers) == 2, text
    rest, grpc = answers
    # REST: the first circle of the test split, top 3
    assert rest["top_k"][0]["label"] == "circle", rest
    assert len(rest["top_k"]) == 3
    # gRPC: the first detection test scene holds a cross, a square, a circle and a pentagon
    labels = {d["label"] for d in grpc["detections"]}
    assert labels and labels <= set(CLASSES), grpc
    assert {"cross", "square"} <= labels, grpc
    assert "TorchServe has stopped" in text, text
    assert not left_running, "TorchServe still ran 30 s after the block's --stop"
