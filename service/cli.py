"""``sepvit-serve``: run the gateway (HTTP on ``--port``, gRPC on ``--grpc-port``).

Command-line values override ``SEPVIT_*`` environment variables, which override the YAML
``--config`` file. Serving keeps OpenMP passive and, by default, one intra-op thread per worker:
spinning OpenMP threads steal the cores that the other requests and workers need.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sepvit-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001)")
    p.add_argument("--no-grpc", action="store_true", help="do not start the gRPC server")
    p.add_argument("--config", help="YAML settings file (any Settings field)")
    p.add_argument("--models", help="YAML model list (name, checkpoint, task, runtime, batching)")
    p.add_argument("--backend", choices=["embedded", "torchserve"])
    p.add_argument(
        "--torchserve-address", help="TorchServe gRPC inference address (default 127.0.0.1:7070)"
    )
    p.add_argument(
        "--torchserve-token-file",
        help="TorchServe's key_file.json (or a file holding its inference key)",
    )
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument("--torch-threads", type=int, help="intra-op threads per worker (default 1)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "grpc_port": args.grpc_port,
        "models_file": args.models,
        "backend": args.backend,
        "torchserve_address": args.torchserve_address,
        "torchserve_token_file": args.torchserve_token_file,
        "workers": args.workers,
        "torch_threads": args.torch_threads,
        "log_level": args.log_level,
    }
    from .settings import load_settings

    try:
        settings = load_settings(args.config, **overrides)
        if args.no_grpc:
            settings.grpc_port = None
    except Exception as exc:  # a configuration error is the user's: say it plainly
        print(f"sepvit-serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    # before torch loads: OpenMP reads these once
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if settings.torch_threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.torch_threads))

    import uvicorn

    from .logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace_s) or None,
        "server_header": False,
    }
    if settings.workers > 1:
        # each worker builds its own app from the environment: hand the CLI values down
        if args.config:
            os.environ["SEPVIT_CONFIG_FILE"] = str(args.config)
        for key, value in overrides.items():
            if value is not None:
                os.environ[f"SEPVIT_{key.upper()}"] = str(value)
        if args.no_grpc:
            os.environ["SEPVIT_GRPC_PORT"] = "null"
        uvicorn.run(
            "service.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
        return 0
    from .app import create_app

    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"sepvit-serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
