"""The pipeline package knows error kinds, never transports: no HTTP status, no gRPC code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import handlers
from handlers.errors import ErrorKind, PipelineError

HANDLERS = Path(handlers.__file__).parent
TRANSPORTS = ("grpc", "fastapi", "starlette", "http", "service", "httpx")
# a status number or gRPC code in code, e.g. `http_status = 413`, `"INVALID_ARGUMENT"`
STATUS_WORDS = re.compile(r"http_status|grpc_code|status_code|StatusCode|INVALID_ARGUMENT")


def _modules() -> list[Path]:
    return sorted(HANDLERS.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_pipeline_modules_know_no_transport(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in TRANSPORTS, f"{path.name} imports {name}"
    assert not STATUS_WORDS.search(source), f"{path.name} mentions a transport status"


def test_errors_module_has_no_status_numbers() -> None:
    tree = ast.parse((HANDLERS / "errors.py").read_text())
    numbers = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    assert not [v for v in numbers if isinstance(v, int) and 100 <= v < 600]


def test_kinds_round_trip_through_their_codes() -> None:
    for kind in ErrorKind:
        err = PipelineError.from_code(kind.value, "m")
        assert err.kind is kind and err.code == kind.value and err.message == "m"
    other = PipelineError.from_code("brand_new", "m")
    assert type(other) is PipelineError and other.code == "brand_new"
