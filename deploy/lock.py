"""Hash-pinned locks of the server and client dependencies, compiled by uv from pyproject.toml.

    scripts/lock.sh                  # refresh every lock (needs PyPI; what to run after editing
                                     # the server or client extras)
    python -m deploy.lock --check    # offline: exit 1 when a lock no longer matches pyproject

Three locks, one resolution target (CPython 3.11 on Linux x86_64, what the images and CI run):

- `requirements/server.txt`: the `server` and `client` extras as declared (onnxruntime-gpu,
  which falls back to the CPU); `scripts/setup.sh` installs it.
- `requirements/server-cpu.txt`: the same with the CPU `onnxruntime` wheel in its place; the
  Dockerfile's `cpu` target.
- `requirements/server-cuda.txt`: the same with `onnxruntime-gpu[cuda,cudnn]`, which adds NVIDIA's
  CUDA 13 and cuDNN 9 runtime wheels; the Dockerfile's `cuda` target.

Each lock starts with the digest of its inputs (requirements, Python, platform), so a test can
tell without network that pyproject.toml changed after the lock was compiled.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
EXTRAS = ("server", "client")
REFRESH_COMMAND = "scripts/lock.sh"
DIGEST_PREFIX = "# inputs-sha256: "
ORT_GPU = "onnxruntime-gpu"


def _name(requirement: str) -> str:
    """The normalised project name a requirement string starts with."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _swap_ort(replacement: str) -> Callable[[str], str]:
    """Replace onnxruntime-gpu's name (and extras) by `replacement`, keeping its version range."""

    def swap(requirement: str) -> str:
        if _name(requirement) != ORT_GPU:
            return requirement
        return replacement + re.sub(r"^\s*[A-Za-z0-9._-]+(\[[^\]]*\])?", "", requirement)

    return swap


@dataclass(frozen=True)
class Lock:
    path: str
    purpose: str
    transform: Callable[[str], str] = lambda requirement: requirement


LOCKS = (
    Lock("requirements/server.txt", "server + client extras as declared (scripts/setup.sh)"),
    Lock(
        "requirements/server-cpu.txt",
        "server + client with the CPU onnxruntime wheel (Dockerfile target cpu)",
        _swap_ort("onnxruntime"),
    ),
    Lock(
        "requirements/server-cuda.txt",
        "server + client with CUDA 13 / cuDNN 9 runtime wheels (Dockerfile target cuda)",
        _swap_ort("onnxruntime-gpu[cuda,cudnn]"),
    ),
)


def declared_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The `server` and `client` extras of pyproject.toml, each requirement once, sorted."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    return sorted({req.strip() for extra in EXTRAS for req in extras[extra]})


def lock_inputs(lock: Lock, requirements: Sequence[str]) -> list[str]:
    return sorted(lock.transform(req) for req in requirements)


def inputs_digest(inputs: Sequence[str]) -> str:
    """What a lock was compiled from: the requirements and the resolution target."""
    text = "\n".join([*inputs, f"python={PYTHON_VERSION}", f"platform={PLATFORM}"])
    return hashlib.sha256(text.encode()).hexdigest()


def header(lock: Lock, inputs: Sequence[str]) -> str:
    lines = [
        f"# {lock.purpose}.",
        f"# Compiled for CPython {PYTHON_VERSION} on {PLATFORM} from pyproject.toml's "
        f"{' + '.join(EXTRAS)} extras; refresh with {REFRESH_COMMAND}.",
        f"{DIGEST_PREFIX}{inputs_digest(inputs)}",
        *(f"#   {req}" for req in inputs),
    ]
    return "\n".join(lines) + "\n"


def recorded_digest(lock_file: Path) -> str | None:
    for line in lock_file.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line.removeprefix(DIGEST_PREFIX).strip()
    return None


def stale_locks(root: Path = ROOT) -> list[str]:
    """One message per lock that is missing or was compiled from other inputs."""
    requirements = declared_requirements(root / "pyproject.toml")
    problems = []
    for lock in LOCKS:
        path = root / lock.path
        if not path.exists():
            problems.append(f"{lock.path} is missing; run {REFRESH_COMMAND}")
            continue
        expected = inputs_digest(lock_inputs(lock, requirements))
        if recorded_digest(path) != expected:
            problems.append(
                f"{lock.path} is out of date with pyproject.toml's {'/'.join(EXTRAS)} extras; "
                f"run {REFRESH_COMMAND}"
            )
    return problems


def pinned(lock_file: Path) -> dict[str, str]:
    """`name -> version` of every `name==version` line of a lock."""
    pins = {}
    for line in lock_file.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[_name(match.group(1))] = match.group(3)
    return pins


def onnxruntime_version(lock_file: Path) -> str | None:
    """The ONNX Runtime release a lock pins (CPU or GPU build)."""
    pins = pinned(lock_file)
    return pins.get(ORT_GPU) or pins.get("onnxruntime")


def compile_lock(
    lock: Lock, root: Path = ROOT, upgrade: bool = False, same_ort_as: Path | None = None
) -> None:
    """Run `uv pip compile` for one lock and prepend the inputs header. `same_ort_as`: a lock
    whose ONNX Runtime release this one must pin too (the CPU and GPU builds are released
    together; one release in every image keeps their results comparable)."""
    inputs = lock_inputs(lock, declared_requirements(root / "pyproject.toml"))
    out = root / lock.path
    out.parent.mkdir(parents=True, exist_ok=True)
    constraints = ""
    if same_ort_as is not None and (version := onnxruntime_version(same_ort_as)):
        constraints = f"onnxruntime=={version}\nonnxruntime-gpu=={version}\n"
    command = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "compile",
        "-",
        "--quiet",
        "--generate-hashes",
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PLATFORM,
        "--custom-compile-command",
        REFRESH_COMMAND,
        "--output-file",
        str(out),
    ]
    if upgrade:
        command.append("--upgrade")
    with tempfile.TemporaryDirectory() as tmp:
        if constraints:
            (Path(tmp) / "constraints.txt").write_text(constraints)
            command += ["--constraint", str(Path(tmp) / "constraints.txt")]
        subprocess.run(command, input="\n".join(inputs) + "\n", text=True, check=True, cwd=root)
    out.write_text(header(lock, inputs) + out.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.lock", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale locks (offline)")
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest")
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_locks()
        for problem in problems:
            print(problem, file=sys.stderr)  # noqa: T201
        return 1 if problems else 0
    first = ROOT / LOCKS[0].path
    for lock in LOCKS:
        # Existing pins are kept unless asked: uv reads the previous output file as preferences.
        compile_lock(lock, upgrade=args.upgrade, same_ort_as=first if lock != LOCKS[0] else None)
        print(f"wrote {lock.path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
