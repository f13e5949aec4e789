"""The dependency locks (requirements/*.txt) are in sync with pyproject.toml, complete and hashed,
agree with each other, and are what the development venv runs. No network: the lock header
records a digest of the inputs it was compiled from."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploy.lock import LOCKS, Lock, declared_requirements, lock_inputs, pinned, stale_locks

ROOT = Path(__file__).resolve().parent.parent


def test_every_lock_was_compiled_from_the_current_pyproject() -> None:
    assert stale_locks(ROOT) == []
    result = subprocess.run(
        [sys.executable, "-m", "deploy.lock", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _copy_project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param('"orjson>=3.10",', '"orjson>=3.11",', id="server-range-changed"),
        pytest.param(
            '"python-multipart>=0.0.9",',
            '"python-multipart>=0.0.9",\n    "rich>=13",',
            id="server-added",
        ),
        pytest.param('client = ["httpx>=0.27"', 'client = ["httpx>=0.28"', id="client-changed"),
    ],
)
def test_a_server_or_client_change_without_a_refresh_fails(
    tmp_path: Path, old: str, new: str
) -> None:
    root = _copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    assert old in text
    pyproject.write_text(text.replace(old, new, 1))
    problems = stale_locks(root)
    assert len(problems) == len(LOCKS)
    assert all("out of date" in p and "scripts/lock.sh" in p for p in problems)


def test_other_extras_do_not_invalidate_the_locks(tmp_path: Path) -> None:
    root = _copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"tqdm>=4.66",', '"tqdm>=4.67",'))
    assert stale_locks(root) == []


def test_a_missing_lock_is_reported(tmp_path: Path) -> None:
    root = _copy_project(tmp_path)
    (root / LOCKS[1].path).unlink()
    assert stale_locks(root) == [f"{LOCKS[1].path} is missing; run scripts/lock.sh"]


@pytest.mark.parametrize("lock", LOCKS, ids=lambda lock: Path(lock.path).stem)
def test_each_input_is_pinned_within_its_range_and_every_pin_has_hashes(lock: Lock) -> None:
    path = ROOT / lock.path
    pins = pinned(path)
    for line in lock_inputs(lock, declared_requirements()):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} not pinned in {path.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    # pip's hash-checking mode needs a hash on every pinned line
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text().split("\n", 1)[1])
    for block in blocks:
        if "==" in block.split("\n", 1)[0]:
            assert "--hash=sha256:" in block, block.split("\n", 1)[0]


def test_the_locks_agree_and_differ_only_in_the_onnxruntime_build() -> None:
    server, cpu, cuda = (pinned(ROOT / lock.path) for lock in LOCKS)
    version = server["onnxruntime-gpu"]
    assert cpu["onnxruntime"] == cuda["onnxruntime-gpu"] == version  # one ORT release everywhere
    assert "onnxruntime-gpu" not in cpu and "onnxruntime" not in server
    cuda_only = set(cuda) - set(server)
    assert cuda_only and all(name.startswith("nvidia-") for name in cuda_only)
    assert cuda["nvidia-cuda-runtime"].startswith("13.")
    assert cuda["nvidia-cudnn-cu13"].startswith("9.")
    assert not any(name.startswith("nvidia-") for name in cpu)
    for name in set(server) & set(cpu) & set(cuda):
        assert server[name] == cpu[name] == cuda[name], name


def test_the_development_venv_runs_the_locked_versions() -> None:
    """scripts/setup.sh installs requirements/server.txt; a venv from before a lock refresh
    fails here (run scripts/setup.sh all again)."""
    pins = pinned(ROOT / LOCKS[0].path)
    drift: dict[str, tuple[str, str | None]] = {}
    for name, version in pins.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            drift[name] = (version, None)
            continue
        if installed != version:
            drift[name] = (version, installed)
    assert drift == {}
