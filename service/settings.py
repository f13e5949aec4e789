"""Service configuration. Every field can be set with an environment variable `LATENTSERVE_<NAME>`
(e.g. `LATENTSERVE_PROVIDERS=cuda,cpu`) or a `.env` file; the README lists them all."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_REPOSITORY = Path(__file__).resolve().parent.parent / "models"


STARTUP_FAILED_MARKER = "startup-failed"
"""A file a worker writes into `shared_state_dir` when its startup fails (`serve` exits 3)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTSERVE_", env_file=".env", extra="ignore")

    # -- models --------------------------------------------------------------------------------
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    """Folder holding one sub-folder per model (model.json + ONNX files)."""
    enabled_models: Annotated[list[str] | None, NoDecode] = None
    """Comma-separated model names to load; default: every model in the repository. /readyz waits
    for all of them."""
    default_model: str | None = "digits-vae"
    """Model used when a request names none."""

    # -- ONNX Runtime --------------------------------------------------------------------------
    providers: Annotated[list[str], NoDecode] = ["cuda", "cpu"]
    """Execution providers in order of preference: cuda, cpu, tensorrt (comma separated)."""
    require_gpu: bool = False
    """Refuse to start when no GPU provider loads, instead of falling back to CPU."""
    cuda_device_id: int = 0
    cuda_mem_limit_mb: int | None = None
    """CUDA memory arena limit per session, in MiB."""
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    """How cuDNN picks convolution algorithms. EXHAUSTIVE times every algorithm again for each
    new batch size, and the batcher forms many: on an H200 it cost the service 30% of its
    throughput (up to 8x on one-row requests) for kernels no faster than HEURISTIC's."""
    cuda_options: dict[str, str] = {}
    """Further CUDA provider options as JSON, e.g. '{"enable_cuda_graph": "1"}'."""
    intra_op_threads: int = Field(default=0, ge=0)
    """Threads ONNX Runtime uses inside one operator; 0 = the cores divided by
    `max_concurrent_batches` and the workers (at least 1) on the CPU, and 1 for a session that
    runs on a GPU (it runs only the few CPU-side nodes there)."""
    inter_op_threads: int = Field(default=1, ge=0)
    intra_op_spinning: bool = False
    """Let ONNX Runtime's threads spin between the parallel sections of a run (they stop when
    the run ends). With `intra_op_threads=2` it cut /sample n=64 p50 at concurrency 1 by about a
    third, and cost 15-25% of n=64 throughput at concurrency 64 (docs/benchmarks.md): off by
    default, for latency-bound deployments."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    prefer_fp16: bool = False
    """Serve each part's fp16 copy where the manifest lists one (inputs/outputs stay float32)."""
    inference_threads: int = Field(default=4, ge=1)
    """Threads that run sessions, so inference never blocks the event loop."""

    # -- batching ------------------------------------------------------------------------------
    batching: bool = True
    """Merge concurrent requests into one session run."""
    max_batch_size: int = Field(default=256, ge=1)
    max_delay_ms: float = Field(default=0.0, ge=0)
    """How long the first request of a batch may wait for others. 0: none; batches still grow
    under load because requests queue while the previous batch runs (docs/benchmarks.md)."""
    inline_max_ms: float = Field(default=1.0, ge=0)
    """A call that finds its model part idle, and is the first to do so in this turn of the
    event loop, runs on the event loop's thread when its measured run time is at most this:
    no thread hand-off for a lone small request (-0.3 ms at concurrency 1 on a one-row
    /decode, docs/benchmarks.md#hot-path). Concurrent calls still queue and batch. 0, or a
    `max_delay_ms` above 0: never."""
    max_concurrent_batches: int = Field(default=2, ge=1)
    """Batches of one session that may run at once (Triton's instance count): 2 lets a second
    core compute while the first batch's results are serialised."""
    max_queue_wait_ms: float = Field(default=10000.0, gt=0)
    """Admission by time: a request is queued only while the expected wait of its model part's
    queue (rows queued / the rows per second that part measures) stays under this; past it the
    request gets 503 at once with a Retry-After computed from that wait."""
    max_queue_rows: int = Field(default=65536, ge=1)
    """Rows held in one part's queue at most, whatever the expected wait: a memory bound."""
    request_timeout_s: float | None = Field(default=None, gt=0)
    """Default timeout of an inference request (none: no limit but the queue wait). A request's
    `X-Request-Timeout` header (seconds) overrides it; past it the answer is 503
    `deadline_exceeded`, and a request that could not finish in time is refused at once."""

    # -- request limits ------------------------------------------------------------------------
    max_request_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_samples: int = Field(default=1024, ge=1)
    """Largest n for /sample and largest batch of inputs per request."""
    max_iwae_k: int = Field(default=1024, ge=1)
    max_sampled_values: int = Field(default=2**25, ge=1)
    """Largest n * k * (values per example) that one elbo/iwae score or /encode draw may expand
    to; bounds the memory a single request can take (2**25 float32 = 128 MiB per array)."""
    max_interpolation_steps: int = Field(default=256, ge=2)

    # -- monitoring ----------------------------------------------------------------------------
    monitoring: bool = True
    """Watch what the anomaly scores say: per model and calibrated score method, a histogram at
    the calibration quantiles, an outlier counter and, over a sliding window, the outlier rate
    and drift (PSI) in /metrics and GET /models/{name}/monitoring (README: Monitoring). False:
    none of it, and nothing added to /anomaly-score's work."""
    monitor_window: int = Field(default=1000, ge=10, le=1_000_000)
    """Recent scores kept per model and score method, in each worker process: the window the
    outlier rate and drift describe. Larger windows react slower and read less noise."""
    monitor_min_scores: int = Field(default=300, ge=1)
    """Scores a window needs before drift is reported: with n in-distribution scores the PSI
    still reads about 9/n from sampling noise (0.03 at 300), plus about 9/(calibration n)
    from the calibration's own (0.05 for digits-vae's 180)."""

    shutdown_drain_s: float = Field(default=1.0, ge=0)
    """After SIGTERM, keep serving this long with `Connection: close` on every response and
    /readyz not ready, so clients drop kept-alive connections and load balancers stop sending
    before the server stops listening (0: stop at once). The graceful timeout follows it."""

    # -- Open Inference Protocol over gRPC ------------------------------------------------------
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`,
    what Triton serves on 8001), run by the same process, runtime and batchers as HTTP; none or
    0: off. Needs the `grpc` extra (grpcio). REST `/v2` routes are always on."""
    grpc_host: str = "127.0.0.1"
    """Interface the gRPC service binds; `latentserve serve` sets it to its `--host`."""
    grpc_grace_s: float = Field(default=30.0, ge=0)
    """At shutdown, seconds the gRPC calls in flight get to finish before they are cancelled
    (new calls are refused at once); `latentserve serve` sets it to its `--graceful-timeout`."""

    workers: int = Field(default=0, ge=0)
    """Server processes behind the port (`serve --workers` overrides): 0 picks one per usable
    CPU core (at most 8) on a CPU host and 1 on a GPU host (`service.hosts`). One-row requests
    at concurrency 64 on 2 cores: 1.76x the throughput of one worker (docs/benchmarks.md#hot-path).
    Each worker gets an equal share of the cores for ONNX Runtime's threads."""

    gc_freeze: bool = True
    """After startup, move every object then alive out of the garbage collector's sight
    (`service.heap`): a full collection then walks requests' garbage only, not the ~80,000
    objects of the loaded libraries and models, which took 60 ms of the event loop each time
    (docs/benchmarks.md#hot-path)."""

    shared_state_dir: Path | None = None
    """Set by `serve --workers N` (not by hand): a directory the worker processes share for
    reload announcements and Prometheus multiprocess files."""

    # -- security and logging ------------------------------------------------------------------
    api_key: SecretStr | None = None
    """If set, every API route needs `Authorization: Bearer <key>`; health, readiness, metrics and
    the web page's files do not (the API docs: `docs_require_api_key`)."""
    docs_require_api_key: bool = True
    """With an API key set, `/docs`, `/redoc` and `/openapi.json` need it too (false: they stay
    public, e.g. for a developer portal that reads the schema)."""
    opentelemetry: bool = False
    """FastAPI's native OpenTelemetry spans and metrics (needs a configured provider, e.g.
    `opentelemetry-instrument`). Off by default: even with no provider, FastAPI's per-request
    check for one took 3% of the event loop under load; Prometheus metrics are always on."""
    ui: bool = True
    """Serve the web page at /ui (samples, latent walks, anomaly scores; docs/ui.md). The page's
    files need no API key; every API call it makes sends the key typed into it."""
    log_level: str = "INFO"
    log_json: bool = True
    """One JSON object per log line (with request_id); plain text when false."""

    # -- Ray Serve (service/ray_serve.py; ignored by `latentserve serve`) -----------------------
    ray_num_replicas: int = Field(default=1, ge=1)
    """Replicas of the Ray Serve deployment when `ray_autoscaling` is off. Each replica is a
    whole server: it loads every enabled model of the repository and batches on its own."""
    ray_autoscaling: bool = False
    """Let Ray Serve add and remove replicas between `ray_min_replicas` and `ray_max_replicas`
    to keep about `ray_target_ongoing_requests` requests in progress per replica."""
    ray_min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas under autoscaling (0: none while idle; the first request then waits for a
    replica to load the models)."""
    ray_max_replicas: int = Field(default=4, ge=1)
    """Most replicas under autoscaling; at least `ray_min_replicas`."""
    ray_target_ongoing_requests: float = Field(default=32.0, gt=0)
    """Autoscaling target per replica. Far above Ray's default (2): a replica only forms
    batches from requests that are in progress at the same time."""
    ray_max_ongoing_requests: int = Field(default=256, ge=1)
    """Requests Ray hands one replica at once; more wait in Ray's router. Ray's default (5)
    would cap a replica's batches at 5 requests."""
    ray_replica_cpus: float = Field(default=1.0, gt=0)
    """CPUs Ray reserves per replica. With `intra_op_threads` at 0, ONNX Runtime's threads per
    batch are these CPUs divided by `max_concurrent_batches`, not the node's cores, so
    replicas on one node do not fight over them."""
    ray_replica_gpus: float = Field(default=0.0, ge=0)
    """GPUs Ray reserves per replica (fractions share one GPU); set with `providers=cuda,...`."""

    @model_validator(mode="after")
    def _window_holds_min_scores(self) -> Settings:
        if self.monitor_min_scores > self.monitor_window:
            raise ValueError(
                f"monitor_min_scores ({self.monitor_min_scores}) must not exceed monitor_window "
                f"({self.monitor_window}): drift would never be reported"
            )
        return self

    @field_validator("providers", "enabled_models", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
            return items or None
        return value

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        allowed = {"cuda", "cpu", "tensorrt"}
        bad = [p for p in value if p.lower() not in allowed]
        if bad or not value:
            raise ValueError(f"providers must be a list from {sorted(allowed)}, got {value}")
        return [p.lower() for p in value]

    @model_validator(mode="after")
    def _replica_bounds(self) -> Settings:
        if self.ray_min_replicas > self.ray_max_replicas:
            raise ValueError(
                f"ray_min_replicas ({self.ray_min_replicas}) exceeds ray_max_replicas "
                f"({self.ray_max_replicas})"
            )
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
