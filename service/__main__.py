"""`python -m service` / `latentserve`: run the server (`serve`), or talk to one from a terminal
(`sample`, `score`, `models`: service/terminal.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service import terminal

cli = typer.Typer(add_completion=False, no_args_is_help=True)
cli.command()(terminal.sample)
cli.command()(terminal.score)
cli.command()(terminal.models)


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    models: Annotated[Path | None, typer.Option(help="Model repository folder")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Server processes, each with its own copy of the models and its own batcher; "
            "/metrics sums them and reloads reach all of them (README: Scaling). Default: "
            "LATENTSERVE_WORKERS, else one per usable CPU core (at most 8) on a CPU host and 1 "
            "on a GPU host"
        ),
    ] = None,
    graceful_timeout: Annotated[
        float, typer.Option(help="Seconds to finish in-flight requests after SIGTERM")
    ] = 30.0,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            help="Also serve the Open Inference Protocol over gRPC on this port, on the same "
            "interface (LATENTSERVE_GRPC_PORT; needs the grpc extra)"
        ),
    ] = None,
) -> None:
    """Serve the model repository over HTTP (settings from LATENTSERVE_* variables)."""
    import contextlib
    import logging
    import os
    import tempfile

    import uvicorn

    from service.hosts import default_workers, gpu_visible, usable_cpus
    from service.logs import configure_logging
    from service.settings import STARTUP_FAILED_MARKER, Settings

    if models is not None:
        os.environ["LATENTSERVE_MODEL_REPOSITORY"] = str(models)
    if grpc_port is not None:
        os.environ["LATENTSERVE_GRPC_PORT"] = str(grpc_port)
    # gRPC listens where HTTP does and drains as long
    os.environ.setdefault("LATENTSERVE_GRPC_HOST", host)
    os.environ.setdefault("LATENTSERVE_GRPC_GRACE_S", str(graceful_timeout))
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    if workers is None:
        workers = settings.workers or default_workers(
            settings.providers, usable_cpus(), gpu_visible()
        )
    if workers < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--workers")
    # every worker reads it: each takes its share of the cores for ONNX Runtime's threads
    os.environ["LATENTSERVE_WORKERS"] = str(workers)
    shown_host = f"[{host}]" if ":" in host else host
    logging.getLogger("latentserve").info(
        "listening on http://%s:%d with %d worker process%s (models from %s)",
        shown_host,
        port,
        workers,
        "" if workers == 1 else "es",
        settings.model_repository,
    )
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # Shared by the worker processes: reload announcements and the Prometheus files
            # that let /metrics sum all workers. Both variables must be set before the workers
            # start (prometheus_client reads its variable at import).
            shared = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="latentserve-")))
            (shared / "prometheus").mkdir()
            os.environ["LATENTSERVE_SHARED_STATE_DIR"] = str(shared)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared / "prometheus")
        uvicorn.run(
            "service.api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=int(graceful_timeout),
        )
        if workers > 1 and (shared / STARTUP_FAILED_MARKER).exists():
            logging.getLogger("latentserve").error("a worker process failed to start")
            raise typer.Exit(3)  # uvicorn's own status for a startup failure


@cli.command()
def version() -> None:
    """Print the version."""
    from service import __version__

    typer.echo(__version__)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
