"""The servers under test, each driven through its real entry point with LMTP ops.

Every backend has the same small surface, :class:`Backend`: ``predict(ops)`` answers one
prediction's list of ``[COMMAND, ARGS]`` pairs with an iterator of ``TOKEN``/``MSG`` chunks, like
a Cog predictor's ``predict(ops_batch_json=...)``, and ``concurrency`` says how many predictions
Cog would run at once (the workloads call ``predict`` from that many threads).

- ``ours``: :class:`lmtp_runtime.predictor.LmtpPredictor`, built with ``from_settings``.
- ``lmql``: LMQL 0.7.3's own ``Scheduler`` and ``TokenSession`` over its Transformers
  ``LMTPModel``, driven as LMQL's Replicate template (``scripts/replicate-build/template/
  predict.py``) drives them: the scheduler is created in setup with ``device_map="auto"``, and
  every prediction opens a ``TokenSession`` on a fresh asyncio event loop (in debug mode, as the
  template sets it), feeds it the ops with local stream ids and forwards the lines of each stream
  until its finish reason. The driver here is ours; LMQL's code is imported, not copied.
- ``floor-recompute`` and ``floor-prefix``: the bare loops of :mod:`floors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from lmtp_cog.model_settings import local_model_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
OURS_RUNTIME = REPO_ROOT / "predictors" / "lmtp_runtime" / "predictor.py"

Ops = Sequence[Sequence[Any]]


class Backend(Protocol):
    name: str
    concurrency: int

    def predict(self, ops: Ops) -> Iterator[str]: ...

    def close(self) -> None: ...


# --- ours ---------------------------------------------------------------------------------------


def ours_available() -> bool:
    """Whether ``predictors/lmtp_runtime/predictor.py`` exists and imports."""
    if not OURS_RUNTIME.exists():
        return False
    add_predictors_to_path()
    try:
        import lmtp_runtime.predictor  # noqa: F401
    except Exception:  # any import failure means "not ready yet" for the harness
        logging.getLogger(__name__).exception("lmtp_runtime.predictor does not import")
        return False
    return True


def ours_settings(checkpoint_dir: Path, *, max_batch_size: int = 8) -> dict[str, Any]:
    """The ``model_settings.json`` content the builder would write for the bench checkpoint."""
    return local_model_settings(
        checkpoint_dir.resolve(), name="bench", repo="local/bench", max_batch_size=max_batch_size
    )


class OursBackend:
    name = "ours"

    def __init__(self, checkpoint_dir: Path) -> None:
        """Cog's ``setup()``: build the predictor; it loads the model before returning."""
        add_predictors_to_path()
        from lmtp_runtime.predictor import LmtpPredictor

        self._predictor = LmtpPredictor.from_settings(ours_settings(checkpoint_dir))
        self.concurrency = self._predictor.settings.serve.concurrency

    def predict(self, ops: Ops) -> Iterator[str]:
        return iter(self._predictor.stream(ops_batch_json=json.dumps(ops)))

    def close(self) -> None:
        self._predictor = None


def add_predictors_to_path() -> None:
    predictors = str(REPO_ROOT / "predictors")
    if predictors not in sys.path:
        sys.path.insert(0, predictors)


# --- LMQL's scheduler ---------------------------------------------------------------------------


class LmqlSchedulerBackend:
    name = "lmql"
    concurrency = 1
    """The template's ``predict`` is a sync generator: Cog runs one prediction at a time."""
    model_args: dict[str, Any] = {"device_map": "auto"}
    """What LMQL's Replicate template passes when config.json sets nothing else."""

    def __init__(self, checkpoint_dir: Path, *, wait_until_loaded: bool = True) -> None:
        """The template's ``setup()``: create the shared scheduler, which loads in its thread.

        The template returns at once and the first prediction waits in the scheduler's queue.
        ``wait_until_loaded`` waits for the load here instead, with the loader's prints
        silenced, so that warm benchmarks start on a ready model.
        """
        from lmql.models.lmtp.lmtp_scheduler import Scheduler

        logging.getLogger("asyncio").setLevel(logging.ERROR)  # debug-mode slow-callback noise
        self._model_id = str(checkpoint_dir.resolve())
        self._scheduler = Scheduler.instance(self._model_id, self.model_args, user=None, sync=False)
        if wait_until_loaded:
            with contextlib.redirect_stdout(io.StringIO()):
                while self._scheduler.model_info() == "<unavailable>":
                    time.sleep(0.02)

    def predict(self, ops: Ops) -> Iterator[str]:
        """One prediction on its own event loop, yielding each line as the template does.

        The ops make the same JSON round trip as ours: the template's ``predict`` receives
        ``ops_batch_json`` and decodes it.
        """
        loop = asyncio.new_event_loop()
        loop.set_debug(True)
        asyncio.set_event_loop(loop)
        lines = self._lines(json.loads(json.dumps(ops)))
        try:
            while True:
                yield loop.run_until_complete(lines.__anext__())
        except StopAsyncIteration:
            return
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _lines(self, ops: Ops) -> AsyncIterator[str]:
        from lmql.models.lmtp.lmtp_async import LMTPAsyncTransport
        from lmql.models.lmtp.lmtp_scheduler import TokenSession

        replies: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        session = TokenSession(LMTPAsyncTransport(replies), self.model_args, static=True, longrunning=True)
        client_ids: dict[int, Any] = {}
        try:
            for local_id, (command, args) in enumerate(ops):
                client_ids[local_id] = args.get("stream_id")
                await session.handle(command, {**args, "stream_id": local_id, "model": self._model_id})
            open_ids = set(client_ids)
            while open_ids:
                kind, payload = await replies.get()
                local_id = payload.get("stream_id")
                if local_id not in open_ids:
                    continue
                yield f"{kind} {json.dumps({**payload, 'stream_id': client_ids[local_id]})}\n"
                if kind == "MSG" or payload.get("finish_reason") is not None or "error" in payload:
                    open_ids.discard(local_id)
        finally:
            session.close()

    def close(self) -> None:
        self._scheduler.dealloc()


def lmql_supports(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` without ``seed``: LMQL's Transformers backend hands every extra argument to
    ``model.generate``, which rejects ``seed`` (transformers 5: "model_kwargs are not used")."""
    return {key: value for key, value in args.items() if key != "seed"}
