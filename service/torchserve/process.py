"""A real TorchServe on free loopback ports, for the tests, the benchmarks and local runs.

:func:`build_archives` packs native checkpoints with ``sepvit-archive``;
:class:`TorchServeProcess` writes a copy of the hardened ``model_store/config.properties`` (token
auth on, model API off; only the addresses and the model store change), starts
``torchserve --foreground`` in its own process group, waits until every model answers a
request, and stops the whole group (java and the Python workers). The same instance can be
started again on the same ports (outage and recovery tests); TorchServe then writes a new
``key_file.json`` into :attr:`TorchServeProcess.work`. :func:`missing` says why none can start.

Each instance has its own temp directory (pid file, worker sockets, extracted archives), so it
runs beside any other TorchServe on the machine. Its java process does not match ``pkill -f
model-server.jar`` (the classpath is ``ts/frontend/*``); it goes with its process group.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from service.processes import ROOT, ServerProcess, free_port

STORE = ROOT / "model_store"
STARTUP_TIMEOUT = 600.0  # a first start exports the models and runs auto's search

__all__ = ["STORE", "TorchServeProcess", "build_archives", "missing", "torchserve_bin"]


def torchserve_bin() -> str | None:
    """The ``torchserve`` launcher of this interpreter's environment (the venv need not be on
    PATH: ``make test`` runs ``.venv/bin/python -m pytest``), else the one on PATH."""
    beside = Path(sys.executable).parent / "torchserve"
    return str(beside) if beside.is_file() else shutil.which("torchserve")


def missing() -> str | None:
    """Why no TorchServe can start here (the ``torchserve`` extra or Java absent), else None."""
    if torchserve_bin() is None or shutil.which("java") is None:
        return "torchserve and java are needed (pip install -e '.[torchserve]'; Java 17)"
    return None


def build_archives(models: Mapping[str, tuple[Path, Path]], store: Path) -> Path:
    """``{archive name: (checkpoint, model-config.yaml)}`` -> ``<store>/<name>.mar``."""
    from service.torchserve.archive import build_archive

    for name, (checkpoint, config) in models.items():
        build_archive(checkpoint, config, name, store)
    return store


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class TorchServeProcess:
    """One TorchServe serving every archive in ``store``; ``models`` are waited for."""

    work: Path
    store: Path
    models: list[str]
    ports: dict[str, int] = field(default_factory=dict)
    token: str = ""
    server: ServerProcess | None = None

    def __post_init__(self) -> None:
        if not self.ports:
            self.ports = {k: free_port() for k in ("inf", "mgmt", "met", "grpc", "grpcm")}
        self.work.mkdir(parents=True, exist_ok=True)
        overrides = {
            "inference_address": f"http://127.0.0.1:{self.ports['inf']}",
            "management_address": f"http://127.0.0.1:{self.ports['mgmt']}",
            "metrics_address": f"http://127.0.0.1:{self.ports['met']}",
            "grpc_inference_port": str(self.ports["grpc"]),
            "grpc_management_port": str(self.ports["grpcm"]),
            "model_store": str(self.store),
        }
        lines = []
        for line in (STORE / "config.properties").read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            lines.append(f"{key}={overrides.pop(key)}" if key in overrides else line)
        lines += [f"{k}={v}" for k, v in overrides.items()]
        self.config = self.work / "config.properties"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.work / "torchserve.log"

    # -- addresses ---------------------------------------------------------------------------
    @property
    def inference(self) -> str:
        return f"http://127.0.0.1:{self.ports['inf']}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.ports['met']}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def key_file(self) -> Path:
        """TorchServe writes its keys here (its working directory) at every start."""
        return self.work / "key_file.json"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.server.proc if self.server is not None else None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = STARTUP_TIMEOUT) -> TorchServeProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("torchserve is already running")
        self.token = ""
        with contextlib.suppress(FileNotFoundError):
            self.key_file.unlink()  # the new process writes a new one
        # a private temp dir: TorchServe keeps its pid file (tempfile.gettempdir()), the workers'
        # sockets and the extracted archives (TEMP -> java.io.tmpdir) there, so it runs beside
        # any other TorchServe on the machine
        tmp = self.work / "tmp"
        tmp.mkdir(exist_ok=True)
        # SEPVIT_* stays: the workers share the caller's export cache (SEPVIT_CACHE_DIR)
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
        env.update(TEMP=str(tmp), TMPDIR=str(tmp))
        argv = [str(torchserve_bin()), "--start", "--foreground", "--ncs"]
        # its own process group: java and the workers stop with it
        self.server = ServerProcess.launch(
            [*argv, "--ts-config", str(self.config)], self.work, env, self.log, group=True
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until every model answers a request (not just until the frontend is up)."""
        assert self.proc is not None
        probe = _png(np.full((64, 64, 3), 128, np.uint8))
        deadline = time.monotonic() + timeout
        pending = set(self.models)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"torchserve exited ({self.proc.returncode}); see {self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"models {sorted(pending)} not ready; see {self.log}")
            if not self.token and self.key_file.is_file():
                with contextlib.suppress(ValueError, KeyError):
                    self.token = json.loads(self.key_file.read_text())["inference"]["key"]
            if self.token:
                for name in list(pending):
                    try:
                        status, _, _ = self.post(name, probe, timeout=10)
                    except OSError:
                        continue
                    if status == 200:
                        pending.discard(name)
            if pending:
                time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left; idempotent."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def kill(self) -> None:
        """An abrupt outage: SIGKILL the whole group at once."""
        if self.server is not None:
            self.server.kill()
            self.server = None

    # -- requests ----------------------------------------------------------------------------
    def post(
        self,
        model: str,
        body: bytes,
        fields: dict[str, str] | None = None,
        token: bool = True,
        timeout: float = 60,
    ) -> tuple[int, dict[str, str], bytes]:
        """POST an image as a multipart ``data`` part (plus text fields) over REST."""
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="x"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + body
            + b"\r\n"
        ]
        for k, v in (fields or {}).items():
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
            parts.append(f"{head}{v}\r\n".encode())
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(
            f"{self.inference}/predictions/{model}",
            data=data,
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        if token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()
