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
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from .settings import Settings

__all__ = ["FLAGS", "main"]


# the settings the command line sets: flag -> Settings field (type, help and default from there)
FLAGS = {
    "--host": "host",
    "--port": "port",
    "--grpc-port": "grpc_port",
    "--models": "models_file",
    "--backend": "backend",
    "--torchserve-address": "torchserve_address",
    "--torchserve-token-file": "torchserve_token_file",
    "--workers": "workers",
    "--torch-threads": "torch_threads",
    "--log-level": "log_level",
}


def _option(name: str) -> dict[str, Any]:
    """``add_argument`` keywords for a Settings field: its type or choices, and its help with
    the default."""
    info = Settings.model_fields[name]
    kind = info.annotation
    if get_origin(kind) in (Union, UnionType):  # X | None
        kind = next(a for a in get_args(kind) if a is not type(None))
    out: dict[str, Any] = {"help": info.description or name.replace("_", " ")}
    if get_origin(kind) is Literal:
        out["choices"] = list(get_args(kind))
    elif kind in (int, float):
        out["type"] = kind
    if info.default is not None:
        out["help"] += f" (default {info.default})"
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sepvit-serve", description=__doc__.split("\n\n")[0])
    for flag, name in FLAGS.items():
        p.add_argument(flag, **_option(name))
    p.add_argument("--no-grpc", action="store_true", help="do not start the gRPC server")
    p.add_argument("--config", help="YAML settings file (any Settings field)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {name: getattr(args, flag[2:].replace("-", "_")) for flag, name in FLAGS.items()}
    from .loader import load_settings

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
