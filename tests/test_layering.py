"""The package layering of docs/architecture.md: ``bench -> service -> handlers -> sepvit``, and
the two TorchServe-side modules of ``service/torchserve/`` (the entry point packed into every
``.mar`` and the archive builder) import only ``sepvit`` and ``handlers`` of this project."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"sepvit", "handlers", "service", "bench", "tests", "scripts", "tools"}
# what each package may import from this project (besides itself)
ALLOWED = {
    "sepvit": set(),
    "handlers": {"sepvit"},
    "service": {"sepvit", "handlers"},
}
# the archive carries sepvit, handlers and the entry point only: no gateway code, no web stack
TORCHSERVE_SIDE = ["service/torchserve/handler.py", "service/torchserve/archive.py"]
GATEWAY_STACK = {"fastapi", "starlette", "uvicorn", "grpc", "pydantic", "service"}


def imported(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports (relative imports resolved)."""
    package = path.relative_to(ROOT).parent.parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                out.add(base[0] if base else (node.module or "").split(".")[0])
            elif node.module:
                out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_below(package: str) -> None:
    wrong = {
        str(p.relative_to(ROOT)): sorted(bad)
        for p in sorted((ROOT / package).rglob("*.py"))
        if (bad := (imported(p) & PROJECT) - ALLOWED[package] - {package})
    }
    assert not wrong, f"imports above the {package} layer: {wrong}"


@pytest.mark.parametrize("path", TORCHSERVE_SIDE)
def test_torchserve_side_imports_no_gateway_code(path: str) -> None:
    assert not imported(ROOT / path) & GATEWAY_STACK


def test_torchserve_side_loads_without_the_gateway_stack() -> None:
    """Importing them (and the packages above them) pulls in no web or gRPC stack."""
    modules = [p.removesuffix(".py").replace("/", ".") for p in TORCHSERVE_SIDE]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        + repr(GATEWAY_STACK - {"service"})
        + "))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
