"""The package layering of docs/architecture.md: ``bench -> service -> handlers -> sepvit``, and
the two TorchServe-side modules of ``service/torchserve/`` (the entry point packed into every
``.mar`` and the archive builder) import only what an archive carries: ``sepvit``, ``handlers``
and the error table ``service/errors.py`` (standard library and typing_extensions only)."""

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
# the archive carries sepvit, handlers, the error table and the entry point: no other gateway
# code, no web or gRPC stack
TORCHSERVE_SIDE = ["service/torchserve/handler.py", "service/torchserve/archive.py"]
SHIPPED = ("sepvit", "handlers", "service.errors")
GATEWAY_STACK = ("fastapi", "starlette", "uvicorn", "grpc", "pydantic")


def modules(path: Path) -> set[str]:
    """Dotted names of the modules ``path`` imports (relative imports resolved)."""
    package = path.relative_to(ROOT).parent.parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            out.add(".".join([*base, *([node.module] if node.module else [])]))
    return out


def imported(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports."""
    return {m.split(".")[0] for m in modules(path)}


def within(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(f"{r}.") for r in roots)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_below(package: str) -> None:
    wrong = {
        str(p.relative_to(ROOT)): sorted(bad)
        for p in sorted((ROOT / package).rglob("*.py"))
        if (bad := (imported(p) & PROJECT) - ALLOWED[package] - {package})
    }
    assert not wrong, f"imports above the {package} layer: {wrong}"


@pytest.mark.parametrize("path", TORCHSERVE_SIDE)
def test_torchserve_side_imports_only_what_the_archive_carries(path: str) -> None:
    project = {m for m in modules(ROOT / path) if m.split(".")[0] in PROJECT}
    assert {m for m in project if not within(m, SHIPPED)} == set()
    assert not imported(ROOT / path) & set(GATEWAY_STACK)


def test_torchserve_side_loads_without_the_gateway() -> None:
    """Importing both loads no gateway module beyond the error table, and no web or gRPC stack."""
    names = [p.removesuffix(".py").replace("/", ".") for p in TORCHSERVE_SIDE]
    own = ("service", "service.torchserve", *names)
    code = "import sys\n" + "".join(f"import {m}\n" for m in names) + "print(*sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    assert [m for m in loaded if within(m, GATEWAY_STACK)] == []
    assert [m for m in loaded if within(m, ("service",)) and m not in own + SHIPPED] == []


def test_the_task_names_agree_across_the_torch_free_boundary() -> None:
    """``handlers.params`` must stay torch-free (the gateway's settings import it before torch),
    so it cannot import ``sepvit.registry``: the two spellings of the task names are checked
    equal here instead."""
    from handlers.params import TASKS as SERVED
    from sepvit.registry import TASKS as BUILT

    assert SERVED == BUILT
