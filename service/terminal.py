"""The client side of the `latentserve` command, for people at a terminal and for scripts:
`sample`, `score` and `models` against a running server, through the SDK (`service.client`).

Exit status: 0 on success, 1 when `score` finds an outlier (so a shell `if` can act on it), 2
when the server answers with an error or cannot be reached (the message goes to stderr).

The SDK (httpx) is imported when a command runs, not when the command line is built: a server
installed without the client extra still runs `latentserve serve`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import typer

from service.capabilities import ScoreMethod

if TYPE_CHECKING:
    from service.client import Client, LatentServeClientError

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OUTLIER = 1
EXIT_ERROR = 2

Url = Annotated[
    str, typer.Option("--url", envvar="LATENTSERVE_URL", help="Server address", show_default=True)
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LATENTSERVE_API_KEY",
        help="API key of a server that needs one (the server's own variable)",
        show_default=False,
    ),
]
ModelName = Annotated[
    str | None, typer.Option("--model", "-m", help="Model name; the server's default if left out")
]
Labels = Annotated[
    str | None,
    typer.Option(help="Class labels for conditional models: one for all, or comma separated"),
]


def _labels(raw: str | None) -> list[int] | None:
    if raw is None:
        return None
    try:
        return [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            "labels are integers, e.g. 3 or 0,1,2", param_hint="--labels"
        ) from None


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, w in zip(cells, widths, strict=True):
            numeric = cell.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()
            out.append(cell.rjust(w) if numeric else cell.ljust(w))
        return "  ".join(out).rstrip()

    return "\n".join([line(head), *(line(r) for r in rows)])


def _fail(exc: LatentServeClientError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(EXIT_ERROR)


def _client(url: str, api_key: str | None) -> tuple[Client, type[LatentServeClientError]]:
    """The SDK's client, and the base class of the errors it raises."""
    try:
        from service.client import Client, LatentServeClientError
    except ImportError as exc:
        typer.echo(f"error: the client commands need the client extra ({exc})", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    return Client(url, api_key=api_key), LatentServeClientError


def sample(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write: a .png grid or a .npy array")
    ],
    url: Url = DEFAULT_URL,
    model: ModelName = None,
    n: Annotated[int, typer.Option("-n", help="How many samples")] = 16,
    seed: Annotated[int | None, typer.Option(help="Same seed, same samples")] = None,
    temperature: Annotated[float, typer.Option(help="Scale of the latent draws")] = 1.0,
    labels: Labels = None,
    scale: Annotated[int, typer.Option(help="Pixels per model pixel in the PNG")] = 1,
    api_key: ApiKey = None,
) -> None:
    """Draw samples from a model and write them as one PNG grid or a .npy array."""
    kinds: dict[str, Literal["png", "npy"]] = {".png": "png", ".npy": "npy"}
    kind = kinds.get(output.suffix.lower())
    if kind is None:
        raise typer.BadParameter("write a .png grid or a .npy array", param_hint="--output")
    label_list = _labels(labels)
    client, failure = _client(url, api_key)
    try:
        with client as c:
            if kind == "png":
                grid = c.sample_png(
                    n,
                    seed=seed,
                    temperature=temperature,
                    labels=label_list,
                    scale=scale,
                    model=model,
                )
                output.write_bytes(grid)
            else:
                x = c.sample(n, seed=seed, temperature=temperature, labels=label_list, model=model)
                np.save(output, x)
    except failure as exc:
        raise _fail(exc) from None
    typer.echo(f"wrote {n} samples to {output}")


def score(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files", exists=True)],
    url: Url = DEFAULT_URL,
    model: ModelName = None,
    method: Annotated[ScoreMethod, typer.Option(help="Which score")] = ScoreMethod.RECONSTRUCTION,
    k: Annotated[int, typer.Option(help="Latent draws per image for elbo and iwae")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the latent draws")] = 0,
    threshold: Annotated[
        float | None, typer.Option(help="Outlier threshold; the model's calibrated one if left out")
    ] = None,
    labels: Labels = None,
    api_key: ApiKey = None,
) -> None:
    """Score images as outliers: one table row per image; exit status 1 when any is one."""
    client, failure = _client(url, api_key)
    try:
        with client as c:
            result = c.anomaly_score_images(
                images,
                method=method.value,
                k=k,
                seed=seed,
                threshold=threshold,
                labels=_labels(labels),
                model=model,
            )
    except failure as exc:
        raise _fail(exc) from None
    flags = result.is_outlier
    limit = "-" if result.threshold is None else f"{result.threshold:.6g}"
    rows = [
        [
            str(path),
            f"{s:.6g}",
            limit,
            "-" if flags is None else ("yes" if flags[i] else "no"),
        ]
        for i, (path, s) in enumerate(zip(images, result.scores.tolist(), strict=True))
    ]
    typer.echo(table(["image", f"score ({method.value})", "threshold", "outlier"], rows))
    if flags is None:
        typer.echo("no threshold applies: calibrate the model or pass --threshold", err=True)
    elif flags.any():
        raise typer.Exit(EXIT_OUTLIER)


def models(url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """List the server's models: status, kind, what each serves and where it runs."""
    client, failure = _client(url, api_key)
    try:
        with client as c:
            listed = c.models()
    except failure as exc:
        raise _fail(exc) from None
    rows = [
        [
            str(m.get("name")),
            str(m.get("version", "-")),
            str(m.get("kind", "-")),
            str(m.get("status", "-")),
            str(m.get("provider") or "-"),
            ", ".join(m.get("operations") or []) or "-",
        ]
        for m in listed
    ]
    typer.echo(table(["model", "version", "kind", "status", "provider", "operations"], rows))
