"""The serving core as one object: settings, worker threads, the model repository.

It knows nothing about HTTP. ``app.py`` starts it in the lifespan and routes
reach it through ``request.app.state.server``.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from service.core import cpu_budget, metric_writes
from service.core.batching import BatchingOptions, DynamicBatcher
from service.core.calls import CostLimits
from service.core.memory import fix_malloc_thresholds
from service.core.model import ServedModel, load_version
from service.core.repository import ModelRepository
from service.core.runtime import ModelRuntime, RuntimeOptions
from service.core.state import Sequences
from service.core.state.memory import MemoryStore
from service.core.state.redis_store import RedisStore
from service.core.state.sequences import SequencesOptions
from service.core.state.store import SequenceStore
from service.settings import ModelBatching, Settings

log = logging.getLogger(__name__)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        fix_malloc_thresholds(settings.malloc_threshold_bytes)  # each worker's own process
        self.options = RuntimeOptions(
            device=settings.device,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            memory_arena=settings.memory_arena,
        )
        self.repository = ModelRepository(
            settings.model_repository,
            loader=self.load,
            default_policy=settings.version_policy,
            policies=settings.model_version_policies,
            drain_s=settings.unload_drain_s,
        )
        self.sequences = self._sequences()
        self._evictor: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._budget: asyncio.Task[None] | None = None
        self._metric_writes: asyncio.Task[None] | None = None
        self.live = True
        self._started = False

    def _sequences(self) -> Sequences:
        """Server-held sequences: in Redis when a state URL is set (any worker, any
        replica); in this process when it runs alone; refused, saying what to set, when
        several workers would each hold a different part of them."""
        settings = self.settings
        store: SequenceStore | None = None
        unavailable = ""
        if settings.state_url is not None:
            password = None
            if settings.state_password_file is not None:
                password = settings.state_password_file.read_text().strip()
            store = RedisStore(
                settings.state_url.get_secret_value(),
                password=password,
                timeout_s=settings.state_timeout_s,
                max_connections=settings.state_max_connections,
            )
        elif settings.workers == 1:
            store = MemoryStore()
        else:
            unavailable = (
                f"server-held sequences (sequence_id) need a shared store when the server runs "
                f"{settings.workers} worker processes: set LSTM_SERVE_STATE_URL="
                "redis://HOST:6379/0, or carry the state in the request (initial_states and "
                "return_states), or stream over the WebSocket /v1/models/{name}/stream"
            )
        options = SequencesOptions(
            idle_timeout_s=settings.sequence_idle_timeout_s,
            max_sequences=settings.max_sequences,
            max_per_key=settings.max_sequences_per_key,
            unavailable=unavailable,
        )
        return Sequences(store, self.repository.get, options)

    def batching_options(self, model: str) -> BatchingOptions | None:
        """Dynamic batching's options for ``model`` (server-wide, then its own); None if off."""
        settings = self.settings
        own = settings.model_batching.get(model, ModelBatching())

        def pick(name: str) -> Any:
            value = getattr(own, name)
            return getattr(settings, name) if value is None else value

        if not pick("dynamic_batching"):
            return None
        return BatchingOptions(
            max_batch_size=pick("max_batch_size"),
            max_queue_delay_s=pick("max_queue_delay_ms") / 1000,
            max_queue_size=settings.max_queue_size,
            bucket_ratio=pick("batch_bucket_ratio"),
            slots=settings.inference_threads,
        )

    def make_batcher(self, runtime: ModelRuntime) -> DynamicBatcher:
        """The version's scheduler. Without dynamic batching a batch is one request: the
        same batcher, so queueing, deadlines and metrics behave the same either way.

        Each version gets threads of its own (``inference_threads``), so a slow call on
        one model never holds another model's requests; the batcher shuts them down
        when the version is unloaded."""
        meta = runtime.metadata
        options = self.batching_options(meta.name) or BatchingOptions(
            dynamic=False,
            max_batch_size=1,
            max_queue_size=self.settings.max_queue_size,
            slots=self.settings.max_queue_size,
        )
        executor = ThreadPoolExecutor(
            max_workers=self.settings.inference_threads,
            thread_name_prefix=f"inference-{meta.name}-{meta.version}",
        )
        return DynamicBatcher(
            runtime, executor, options, self.cost_limits(options), owns_executor=True
        )

    def cost_limits(self, options: BatchingOptions) -> CostLimits:
        """What one request and one onnxruntime call may cost (``core/cost.py``)."""
        return CostLimits(
            max_request_timesteps=self.settings.max_request_timesteps,
            max_call_cells=self.settings.max_call_cells,
            bucket_ratio=options.bucket_ratio,
        )

    def load(self, version_dir: Path) -> ServedModel:
        """Load and warm up one version (blocking; the repository calls it in a thread)."""
        return load_version(version_dir, self.options, self.make_batcher)

    @property
    def ready(self) -> bool:
        """Started and at least one model serving: server readiness (KServe's and Triton's
        ``/v2/health/ready``). A version loading, draining or failed after startup does
        not make a serving server unready: that is the model's readiness
        (``/v2/models/{m}/ready``), so a slow or broken load, or a loop of load calls,
        never takes the whole server out of its load balancer."""
        return not self.not_ready_reason()

    def not_ready_reason(self) -> str:
        """Why the server is not ready ("" when it is): the readiness answer says it."""
        if not self._started:
            return "starting: models are loading"
        if not self.repository.names():
            failed = [s for s in self.repository.index() if s.state == "UNAVAILABLE"]
            detail = "; ".join(f"{s.name} {s.version}: {s.reason}" for s in failed[:5])
            return f"no model is loaded ({detail or 'the repository holds none'})"
        return ""

    async def start(self) -> None:
        """Load and warm up every model before reporting ready."""
        self._metric_writes = asyncio.create_task(metric_writes.flush_forever())
        if self.settings.cpu_budget:
            cpu_budget.enable()
            self._budget = asyncio.create_task(cpu_budget.flush_forever())
        await self.repository.load_all()
        loaded = [f"{m.name}:{m.version}" for m in self.repository.all()]
        if not loaded:
            log.warning("no model loaded from %s", self.settings.model_repository)
        log.info("ready: %s", ", ".join(loaded) or "no models")
        store = self.sequences.store
        if isinstance(store, MemoryStore):  # Redis expires keys itself
            every = min(10.0, self.settings.sequence_idle_timeout_s / 2)
            self._evictor = asyncio.create_task(_purge_forever(store, every))
        elif isinstance(store, RedisStore):
            answered = await store.ping()
            log.log(
                logging.INFO if answered else logging.WARNING,
                "sequence store %s %s",
                store.url,
                "answers" if answered else "does not answer yet: server-held sequences get 503",
            )
        if self.settings.model_control_mode == "poll":
            self._poller = asyncio.create_task(self._poll_forever())
        self._started = True
        if not self.ready:
            log.error("not ready: %s", self.not_ready_reason())

    async def _poll_forever(self) -> None:
        """Poll control mode: rescan the repository periodically; a failure never stops it."""
        while True:
            await asyncio.sleep(self.settings.model_control_poll_s)
            try:
                await self.repository.poll()
            except Exception:
                log.exception("poll of the model repository failed; retrying next period")

    async def stop(self) -> None:
        self._started = False
        for task in (self._evictor, self._poller, self._budget, self._metric_writes):
            if task is not None:
                task.cancel()
        await self.repository.close()  # closes every version's batcher and its threads
        await self.sequences.close()
        metric_writes.flush()  # what the last batches and requests counted


async def _purge_forever(store: MemoryStore, every_s: float) -> None:
    """Background task: forget idle sequences even when no new one arrives."""
    while True:
        await asyncio.sleep(every_s)
        store.purge()
