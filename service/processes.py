"""Local server processes on free loopback ports, shared by the tests and the benchmarks.

* :func:`free_port`: a free TCP port on 127.0.0.1;
* :func:`child_env`: this environment without ``SEPVIT_*`` settings, OpenMP threads passive;
* :class:`ServerProcess`: a child process writing to a log file, stopped with SIGTERM and then
  SIGKILL (its whole process group when started with ``group=True``), polled with
  :meth:`ServerProcess.wait_http`;
* :func:`start_gateway`: ``sepvit-serve`` from a settings mapping, returned once it is ready.

The TorchServe launcher is :mod:`service.torchserve.process`. Nothing here imports FastAPI or
gRPC: a launcher only starts processes and polls URLs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import yaml

ROOT = Path(__file__).resolve().parents[1]
READY_PATH = "/v2/health/ready"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child server: no ``SEPVIT_*`` setting leaks in, OpenMP
    threads do not spin, output is unbuffered; ``extra`` is added last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPVIT_")}
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1", **extra)
    return env


def http_status(url: str, headers: Mapping[str, str] | None = None, timeout: float = 2.0) -> int:
    """The status of ``GET url``; 0 when nothing answers."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


@dataclass
class ServerProcess:
    """A child process with its log file."""

    proc: subprocess.Popen[bytes]
    log: Path
    group: bool = False  # started in its own session: stop() signals the whole process group

    @classmethod
    def launch(
        cls,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        log: Path,
        group: bool = False,
        **fields: Any,
    ) -> Self:
        """Start ``argv`` (its output appended to ``log``); ``fields``: a subclass's fields."""
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=group,
            )
        return cls(proc, log, group, **fields)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s (what is left of the group goes too);
        the exit status. Idempotent."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        if self.group:  # workers left in the group go too
            self._signal(signal.SIGKILL)
        return int(self.proc.returncode)

    def kill(self) -> None:
        """An abrupt outage: SIGKILL at once."""
        self._signal(signal.SIGKILL)
        self.proc.wait(30)

    def wait_http(
        self,
        url: str,
        ok: Sequence[int] = (200,),
        timeout: float = 600.0,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Poll ``GET url`` until it answers one of ``ok``; RuntimeError with the log's tail when
        the process exits or ``timeout`` s pass."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args!r} exited:\n{self.tail()}")
            code = http_status(url, headers)
            if code in ok:
                return code
            time.sleep(0.2)
        raise RuntimeError(f"{url} did not answer {tuple(ok)} in {timeout} s:\n{self.tail()}")


@dataclass
class GatewayProcess(ServerProcess):
    """A ``sepvit-serve`` process on loopback."""

    port: int = 0
    grpc_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return str(r.read().decode())


def start_gateway(
    work: Path,
    settings: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,  # a first load of a runtime: auto exports and searches
) -> GatewayProcess:
    """Start ``sepvit-serve --config`` with ``settings`` (``port`` and ``grpc_port`` default to
    free ports; ``grpc_port: None`` turns gRPC off) and wait until ``/v2/health/ready`` answers
    200 (with the first of ``auth_tokens``, if any). ``env``: the child's environment
    (default :func:`child_env`)."""
    config = {"port": free_port(), "grpc_port": free_port(), **settings}
    port = int(config["port"])
    cfg = work / f"gateway-{port}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log = work / f"gateway-{port}.log"
    argv = [sys.executable, "-m", "service.cli", "--config", str(cfg)]
    gw = GatewayProcess.launch(
        argv,
        ROOT,
        child_env() if env is None else env,
        log,
        port=port,
        grpc_port=config["grpc_port"],
    )
    tokens = config.get("auth_tokens") or []
    headers = {"Authorization": f"Bearer {tokens[0]}"} if tokens else None
    try:
        gw.wait_http(f"{gw.url}{READY_PATH}", timeout=timeout, headers=headers)
    except BaseException:
        gw.stop()
        raise
    return gw
