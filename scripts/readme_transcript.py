"""Run every command block of ``README.md`` as written and record what happened in
``docs/readme_transcript.md``.

Each fenced block gets one plan: by its language, unless a string in it names a special case
(:data:`SPECIAL`):

- ``run``: a ``bash`` block runs under ``bash -e``, a ``python`` block under ``.venv/bin/python``;
- ``session``: a ``text`` block of ``$ command`` lines (the README's terminal sessions): each
  command runs under bash and its real output is recorded beside the README's;
- ``serve``: a block that ends in a server runs in the background until its readiness URL
  answers 200; ``keep`` leaves it up for the blocks after it (``make serve`` for the endpoint
  sessions), otherwise it runs in a network namespace of its own and is stopped at once;
- ``skip``: not run, with the reason (a Docker engine, a cluster, a GPU, hours of training, or a
  file that is not shipped). Nothing is pretended;
- ``config``: not a command (YAML, a diagram, a listing).

Everything runs in a copy of the checkout as git would check it out (no build outputs), with this
checkout's ``.venv`` linked in and its ONNX export cache shared (``SEPVIT_CACHE_DIR``), inside a
private network namespace (``unshare -rn``) so the README's fixed ports (8000, 8080, ...) are free
and reach nothing else. ``tests/docs/test_readme_transcript.py`` checks that the transcript covers
the README's current blocks (by content hash), so a changed block needs a fresh run:

    .venv/bin/python scripts/readme_transcript.py            # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.docs.readme_blocks import Block, blocks, clean_copy  # noqa: E402

OUT = ROOT / "docs" / "readme_transcript.md"
MAX_LINES = 30


@dataclass(frozen=True)
class Plan:
    kind: str  # run | session | serve | skip | config
    note: str = ""
    ready_url: str = ""  # serve: the URL that answers 200 once up
    keep: bool = False  # serve: leave it running for the blocks after it
    stop: str = ""  # serve: what stops the rest of it, besides the process group
    continues: bool = False  # run: the block goes on from the previous one of its language


# Blocks that are not simply run, found by a string in them (first match wins). Every other
# block follows its language: bash and python run, a text block of "$ " lines is a session, and
# anything else (YAML, diagrams, listings) is not a command.
SPECIAL: list[tuple[str, Plan]] = [
    (
        "make test ",
        Plan(
            "skip",
            "`make test` is what CI runs on every submission (.ci/run), about 20 min; "
            "`make serve` is the server that the Gateway block starts",
        ),
    ),
    (
        "SepViT_Tiny.pth",
        Plan("skip", "needs SepViT_Tiny.pth, the official ImageNet checkpoint, not shipped here"),
    ),
    ("--format tensorrt", Plan("skip", "needs a CUDA GPU with TensorRT")),
    (
        "retinanet_sepvit_t_fpn_1x_coco",
        Plan(
            "skip",
            "needs mmdet/mmseg checkpoints trained with the official configs, not shipped here "
            "(tests/sepvit/heads/test_openmmlab_golden.py and "
            "tests/service/test_official_checkpoints.py build seeded ones and run the same calls)",
        ),
    ),
    (
        "sepvit-train ",
        Plan(
            "skip",
            "hours of CPU training (`make models`: about 3 hours on 2 cores; docs/shapes.md has "
            "the runs' logs and timings); the evaluation line needs those runs",
        ),
    ),
    ("docker compose", Plan("skip", "needs a Docker engine and a Kubernetes cluster with Helm")),
    (
        "client.start_stream(",
        Plan("run", "goes on from the block before it (its client and images)", continues=True),
    ),
    (
        "--backend torchserve",
        Plan(
            "serve",
            "in a network namespace of its own (the gateway of `make serve` holds port 8000)",
            "http://127.0.0.1:8000/v2/health/ready",
            stop=".venv/bin/torchserve --stop",
        ),
    ),
    (
        "make serve ",
        Plan(
            "serve",
            "kept running for the Endpoints sessions",
            "http://127.0.0.1:8000/v2/health/ready",
            keep=True,
        ),
    ),
]


def plan_for(block: Block) -> Plan:
    for needle, plan in SPECIAL:
        if needle in block.text:
            return plan
    if block.lang in ("bash", "python"):
        return Plan("run")
    if block.lang == "text" and session_commands(block.text):
        return Plan("session")
    return Plan("config", f"a {block.lang or 'plain'} block (configuration, diagram or listing)")


def clip(text: str) -> str:
    lines = [line if len(line) <= 400 else line[:400] + " …" for line in text.splitlines()]
    if len(lines) > MAX_LINES:
        half = MAX_LINES // 2
        lines = [*lines[:half], f"… ({len(lines) - MAX_LINES} lines left out) …", *lines[-half:]]
    return "\n".join(lines)


def session_commands(text: str) -> list[str]:
    """The ``$ `` commands of a terminal session, continuation lines joined."""
    cmds: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("$ "):
            cmd = lines[i][2:]
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd + "\n" + lines[i]
            cmds.append(cmd)
        i += 1
    return cmds


class Runner:
    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.repo = repo
        self.env = env
        self.kept: list[subprocess.Popen[bytes]] = []

    def sh(
        self, argv: list[str], stdin: str | None = None, timeout: float = 900
    ) -> tuple[int, str, float]:
        t0 = time.monotonic()
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.repo,
                env=self.env,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin.encode())
                proc.stdin.close()
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = 124
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out.seek(0)
            return rc, out.read().decode(errors="replace"), time.monotonic() - t0

    def run(self, block: Block, before: str = "") -> tuple[int, str, float]:
        if block.lang == "python":
            return self.sh([".venv/bin/python", "-"], stdin=before + block.text)
        return self.sh(["bash", "-e", "-c", before + block.text])

    def session(self, block: Block) -> tuple[int, str, float]:
        parts, worst, total = [], 0, 0.0
        for cmd in session_commands(block.text):
            rc, out, dt = self.sh(["bash", "-c", cmd], timeout=300)
            worst, total = worst or rc, total + dt
            parts.append(f"$ {cmd}\n{out.rstrip()}" + (f"\n(exit {rc})" if rc else ""))
        return worst, "\n".join(parts), total

    def serve(self, block: Block, plan: Plan) -> tuple[int, str, float]:
        script = block.text
        argv = ["bash", "-e", "-c", script]
        if not plan.keep:  # its own namespace: the kept server already holds the same ports
            argv = [
                "unshare",
                "-rn",
                "bash",
                "-c",
                f"ip link set lo up && {plan_script(script, plan)}",
            ]
        log_path = self.repo.parent / f"serve-{block.line}.log"
        t0 = time.monotonic()
        with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                argv,
                cwd=self.repo,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ready = False
        if plan.keep:
            while proc.poll() is None and time.monotonic() - t0 < 600:
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(plan.ready_url, timeout=2) as r,
                ):
                    ready = r.status == 200
                if ready:
                    break
                time.sleep(1)
        else:
            proc.wait(900)
            # what the block started in the background and its stop left running (a gateway
            # whose parent shell was killed) is still in the block's process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        dt = time.monotonic() - t0
        text = log_path.read_text(errors="replace")
        if plan.keep and ready:
            self.kept.append(proc)
            return 0, f"(ready: {plan.ready_url} answered 200 after {dt:.0f} s)\n{text}", dt
        if not plan.keep:
            return proc.returncode, text, dt
        self.stop(proc)
        return 1, f"(not ready after {dt:.0f} s)\n{text}", dt

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(30)
                break
            except subprocess.TimeoutExpired:
                continue

    def close(self) -> None:
        for proc in self.kept:
            self.stop(proc)


def plan_script(script: str, plan: Plan) -> str:
    """A background server block in its own namespace: start it, wait until ready, stop it
    (and whatever ``plan.stop`` names), then report the wait."""
    quoted = script.replace("'", "'\\''")
    return (
        f"(bash -e -c '{quoted}') & pid=$!; "
        f"for i in $(seq 600); do curl -sf {plan.ready_url} >/dev/null && break; "
        "kill -0 $pid 2>/dev/null || break; sleep 1; done; "
        f"code=$(curl -s -o /dev/null -w '%{{http_code}}' {plan.ready_url}); "
        'echo "(readiness: $code after $i s)"; '
        f"kill $pid 2>/dev/null; {plan.stop or 'true'}; wait $pid; "
        'test "$code" = 200'
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, default=OUT)
    a = p.parse_args(argv)
    if not (ROOT / ".venv" / "bin" / "python").is_file():
        raise SystemExit("run `make venv` first")
    if os.environ.get("SEPVIT_TRANSCRIPT_NETNS") != "1":  # re-run itself in a private namespace
        cmd = [
            "unshare",
            "-rn",
            "bash",
            "-c",
            'ip link set lo up && exec "$0" "$@"',
            sys.executable,
            __file__,
            *(argv if argv is not None else sys.argv[1:]),
        ]
        env = {
            **os.environ,
            "SEPVIT_TRANSCRIPT_NETNS": "1",
            "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin",
        }
        return subprocess.call(cmd, env=env)
    readme = blocks()
    work = Path(tempfile.mkdtemp(prefix="readme-transcript-"))
    repo = clean_copy(work / "checkout")
    tmp = work / "tmp"
    tmp.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "SEPVIT_CACHE_DIR": str(ROOT / ".cache"),
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    runner = Runner(repo, env)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    lines = [
        "# README commands: transcript",
        "",
        f"Written by `scripts/readme_transcript.py` from commit {commit}"
        + (" plus uncommitted changes" if dirty.strip() else "")
        + ".",
        "",
        "Every fenced block of README.md, in order, and what was done with it: run as written in",
        "a copy of the checkout (no build outputs; this checkout's `.venv` and ONNX export cache),",
        "inside a private network namespace, or not run, and why. Outputs are clipped to",
        f"{MAX_LINES} lines. `tests/docs/test_readme_transcript.py` fails when a block of the",
        "README changes without a new transcript.",
        "",
    ]
    summary: dict[str, int] = {}
    previous: dict[str, str] = {}  # the last block of each language, for blocks that go on
    try:
        for block in readme:
            plan = plan_for(block)
            before = previous.get(block.lang, "") if plan.continues else ""
            previous[block.lang] = before + block.text
            head = f"## README.md:{block.line} · {block.section}"
            meta = f"<!-- block {block.digest} -->"
            if plan.kind in ("skip", "config"):
                verdict = (
                    "not run: " + plan.note
                    if plan.kind == "skip"
                    else "not a command: " + plan.note
                )
                lines += [head, meta, "", f"**{verdict}**", ""]
                summary[plan.kind] = summary.get(plan.kind, 0) + 1
                continue
            print(f"README.md:{block.line} ({block.section}): {plan.kind}", flush=True)
            if plan.kind == "run":
                rc, out, dt = runner.run(block, before)
            elif plan.kind == "session":
                rc, out, dt = runner.session(block)
            else:
                rc, out, dt = runner.serve(block, plan)
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
            summary[status if rc else plan.kind] = summary.get(status if rc else plan.kind, 0) + 1
            note = f" ({plan.note})" if plan.note else ""
            lines += [head, meta, "", f"**{plan.kind}: {status}** in {dt:.1f} s{note}", ""]
            if plan.kind != "session":
                lines += [f"```{block.lang or 'text'}", block.text.rstrip(), "```", ""]
            lines += ["Output:", "", "```text", clip(out) or "(none)", "```", ""]
    finally:
        runner.close()
        shutil.rmtree(work, ignore_errors=True)
    counted = ", ".join(f"{v} {k}" for k, v in sorted(summary.items()))
    lines[10:10] = [f"Blocks: {counted}.", ""]
    a.output.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {a.output}: {counted}")
    return 1 if any(k.startswith("FAILED") for k in summary) else 0


if __name__ == "__main__":
    raise SystemExit(main())
