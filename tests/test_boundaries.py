"""Package boundaries: `training` needs no server package, the runtime no HTTP package, and no
two modules import each other (directly or round a longer circle)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "orjson", "multipart", "prometheus_client")


def _run_with_blocked(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter where importing any of `modules` fails, as it would
    where they are not installed."""
    blocker = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {modules!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
                return None
        sys.meta_path.insert(0, Block())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_training_loads_an_image_folder_without_server_packages(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    done = _run_with_blocked(
        SERVER_ONLY,
        f"""
        from pathlib import Path
        from training.data import load_dataset
        splits = load_dataset("images", {str(tmp_path)!r}, flat=False, image_shape=(1, 8, 8))
        total = len(splits.train) + len(splits.val) + len(splits.test)
        print(total, splits.num_classes, tuple(splits.train.x.shape[1:]))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["12", "2", "(1,", "8,", "8)"]


def test_runtime_imports_no_http_package() -> None:
    done = _run_with_blocked(
        SERVER_ONLY,
        """
        import service.runtime.dataplane, service.runtime.repository, service.arrays
        import service.images, service.capabilities, training.calibrate
        print("ok")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_command_line_serves_without_the_client_or_grpc_extras() -> None:
    """A server-only install (the Dockerfile's `.[server]`) builds the whole command line and
    the app: the client commands import httpx and the gRPC door grpcio only when used."""
    done = _run_with_blocked(
        ("httpx", "grpc", "google"),
        """
        from typer.testing import CliRunner
        from service.__main__ import cli
        from service.api.app import create_app
        result = CliRunner().invoke(cli, ["serve", "--help"])
        assert result.exit_code == 0, result.output
        create_app()
        print("ok")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _imports(path: Path, package_root: Path) -> set[str]:
    """Modules of this project that `path` imports, anywhere in the file (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in ("service", "training")}


def test_no_import_circles() -> None:
    modules: dict[str, Path] = {}
    for package in ("service", "training"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph = {
        name: {m for m in _imports(path, ROOT) if m in modules and m != name}
        for name, path in modules.items()
    }
    # packages' __init__ modules are imported on the way to their children: not edges
    graph = {k: {m for m in v if not k.startswith(m + ".")} for k, v in graph.items()}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str], on_stack: set[str], done: set[str]) -> None:
        on_stack.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [], set(), done)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
