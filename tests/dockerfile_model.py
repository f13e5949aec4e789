"""The Dockerfile read as data (through dockerfile-parse), for tests/test_docker.py: its stages,
what each inherits, and the build context that .dockerignore leaves. No Docker engine runs on
this project's machines, so these are what the tests can check instead of a build."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser


@dataclass
class Stage:
    name: str
    parent: Stage | None
    base_image: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def chain(self) -> list[Stage]:
        """This stage and the stages it is built FROM, the oldest first."""
        return [*(self.parent.chain() if self.parent else []), self]

    def own(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]

    def all(self, instruction: str) -> list[str]:
        """Values of `instruction` in this stage and its ancestors, in build order."""
        return [value for stage in self.chain() for value in stage.own(instruction)]

    def last(self, instruction: str) -> str | None:
        """What the image ends up with for a single-valued instruction (USER, CMD, ...)."""
        values = self.all(instruction)
        return values[-1] if values else None

    def env(self) -> dict[str, str]:
        """ENV of the stage and its ancestors, $VAR references expanded like Docker does."""
        env: dict[str, str] = {}
        for value in self.all("ENV"):
            for item in shlex.split(value):
                key, _, val = item.partition("=")
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), val)
        return env

    def exec_form(self, instruction: str) -> list[str]:
        """The JSON array of CMD/ENTRYPOINT (or HEALTHCHECK's CMD); ValueError if shell form."""
        value = self.last(instruction)
        if value is None:
            return []
        if instruction == "HEALTHCHECK":
            value = value.split(" CMD ", 1)[1].strip()
        parsed = json.loads(value)
        if not (isinstance(parsed, list) and all(isinstance(v, str) for v in parsed)):
            raise ValueError(f"{instruction} is not in exec form: {value}")
        return parsed

    def healthcheck_options(self) -> dict[str, str]:
        value = self.last("HEALTHCHECK") or ""
        options = value.split(" CMD ", 1)[0].split()
        return dict(opt.removeprefix("--").split("=", 1) for opt in options)


def stages(dockerfile: Path) -> dict[str, Stage]:
    """The Dockerfile's stages by name, in order."""
    parser = DockerfileParser(path=str(dockerfile))
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "FROM":
            image, _, name = value.partition(" AS ")
            image = image.strip()
            current = Stage(name.strip(), found.get(image), image)
            found[current.name] = current
        elif current is not None and kind != "COMMENT":
            current.instructions.append((kind, re.sub(r"\s+", " ", value).strip()))
    return found


def copy_sources(stage: Stage) -> list[str]:
    """Build-context paths a stage copies (COPY without --from)."""
    sources = []
    for value in stage.own("COPY"):
        parts = [p for p in value.split() if not p.startswith("--")]
        if "--from=" not in value:
            sources += parts[:-1]
    return sources


# -- .dockerignore, with Docker's rules: the last matching pattern wins, "!" re-includes, and a
# -- pattern that matches a directory matches everything under it.


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignore_patterns(dockerignore: Path) -> list[tuple[bool, str, re.Pattern[str]]]:
    """(excludes?, pattern, regex) per line of .dockerignore."""
    patterns = []
    for raw in dockerignore.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        path = line.removeprefix("!").strip().strip("/")
        patterns.append((not negated, path, _pattern_regex(path)))
    return patterns


def is_ignored(relpath: str, patterns: list[tuple[bool, str, re.Pattern[str]]]) -> bool:
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for excludes, _, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = excludes
    return ignored


def build_context(root: Path) -> Iterator[str]:
    """Every file of `root` that `docker build` would send (relative paths). An ignored folder
    that no "!" pattern reaches into is skipped without listing it (.venv, .git)."""
    patterns = ignore_patterns(root / ".dockerignore")
    reincluded = [pattern for excludes, pattern, _ in patterns if not excludes]
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root).as_posix()
        base = "" if base == "." else base + "/"
        dirs[:] = sorted(
            d
            for d in dirs
            if not is_ignored(base + d, patterns)
            or any(p.startswith(base + d + "/") or "*" in p for p in reincluded)
        )
        for name in sorted(files):
            if not is_ignored(base + name, patterns):
                yield base + name
