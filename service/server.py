"""The serving core as one object: settings, worker threads, the model repository.

It knows nothing about HTTP. ``app.py`` starts it in the lifespan and routes
reach it through ``request.app.state.server``.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from service.repository import ModelRepository
from service.runtime import RuntimeOptions
from service.settings import Settings

log = logging.getLogger(__name__)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_threads, thread_name_prefix="inference"
        )
        options = RuntimeOptions(
            device=settings.device,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        )
        self.repository = ModelRepository(
            settings.model_repository, options, self.executor, settings.max_queue_size
        )
        self.live = True
        self.ready = False

    async def start(self) -> None:
        """Load every model off the event loop, then report ready."""
        await asyncio.get_running_loop().run_in_executor(None, self.repository.load_latest)
        loaded = [f"{m.name}:{m.version}" for m in self.repository.all()]
        if not loaded:
            log.warning("no model loaded from %s", self.settings.model_repository)
        log.info("ready: %s", ", ".join(loaded) or "no models")
        self.ready = bool(loaded)

    async def stop(self) -> None:
        self.ready = False
        await self.repository.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
