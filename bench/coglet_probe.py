"""What the Cog runtime (coglet) does with a predictor's output, measured on the real server.

    .venv/bin/python bench/coglet_probe.py

The design of concurrent predictions rests on four questions this answers with timestamps:

1. Does coglet stream the chunks of an *async* generator as they are yielded, or send them at the
   end? (A sync generator streams; concurrency above 1 requires an async run.)
2. With ``@cog.concurrent(max=N)`` (``cog build`` bakes ``COG_MAX_CONCURRENCY=N`` into the image
   from it), do predictions run at the same time, or one after another?
3. Does canceling a prediction stop the code that produces its output?
4. Sent back to back by one caller (each the moment the last one returned), how many
   predictions does coglet refuse with 409 because the last one's slot is not free yet?

Each probe is a tiny predictor written to a temporary folder and served by the real Cog server
(``lmtp_cog.cogserver.CogServer``) exactly as its image would run: with the OpenAPI schema and the
concurrency ``cog build`` reads from its source. Two predictions are started 300 ms apart; each
yields 5 chunks, 200 ms apart. Then a third one, of 10 chunks, is canceled after its second chunk:
the probe counts the chunks the predictor still produced after the cancel. Last, 200 one-chunk
predictions are sent back to back, and the 409s counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmtp_cog.cogserver import CogServer  # noqa: E402
from lmtp_cog.serve.cog_client import Busy, CogClient, Started  # noqa: E402

CHUNKS = 5
PAUSE_S = 0.2
OFFSET_S = 0.3
CANCEL_CHUNKS = 10
CANCEL_AFTER = 2
BACK_TO_BACK = 200

PROBES = {
    "sync generator": """
        @streaming
        def run(self, n: int = 5, pause: float = PAUSE) -> Iterator[str]:
            for index in range(n):
                time.sleep(pause)
                produced(index)
                yield f"chunk {index}"
        """,
    "async generator, @cog.concurrent(max=4)": """
        @streaming
        @concurrent(max=4)
        async def run(self, n: int = 5, pause: float = PAUSE) -> AsyncIterator[str]:
            for index in range(n):
                await asyncio.sleep(pause)
                produced(index)
                yield f"chunk {index}"
        """,
    "coroutine returning a sync generator, @cog.concurrent(max=1)": """
        @streaming
        @concurrent(max=1)
        async def run(self, n: int = 5, pause: float = PAUSE) -> Iterator[str]:
            return chunks(n, pause)
        """,
    "coroutine returning a sync generator, @cog.concurrent(max=4)": """
        @streaming
        @concurrent(max=4)
        async def run(self, n: int = 5, pause: float = PAUSE) -> Iterator[str]:
            return chunks(n, pause)
        """,
}

HEADER = f"""
import asyncio
import sys
import time
from typing import AsyncIterator, Iterator

from cog import BaseRunner, concurrent, streaming

PAUSE = {PAUSE_S}


def produced(index):
    print(f"produced {{index}}", file=sys.stderr, flush=True)  # to the server's log


def chunks(n, pause):
    for index in range(n):
        time.sleep(pause)
        produced(index)
        yield f"chunk {{index}}"


class Predictor(BaseRunner):
    def setup(self) -> None:
        pass
"""


@dataclass
class Timeline:
    """When each output chunk of one prediction arrived, seconds after the first request."""

    outputs: list[float] = field(default_factory=list)
    status: str = ""


@dataclass
class ProbeResult:
    timelines: list[Timeline]
    produced_before_cancel: int
    """Chunks the canceled prediction's code had produced when the cancel request was sent
    (after its second chunk had arrived)."""
    produced_after_cancel: int
    """Chunks it still produced after the cancel request."""
    cancel_completed_s: float
    """Seconds from the cancel request to Cog's ``completed`` event."""
    refused_back_to_back: int
    """Of ``BACK_TO_BACK`` predictions sent one after another, how many got 409."""


def run_probe(name: str, body: str, workdir: Path) -> ProbeResult:
    project = workdir / f"probe-{len(list(workdir.iterdir()))}"
    project.mkdir()
    (project / "predict.py").write_text(HEADER + textwrap.indent(textwrap.dedent(body), "    "))
    with CogServer(project) as server:
        server.wait_ready(timeout=60)
        client = CogClient(server.url)
        timelines = _two_predictions(client)

        def produced() -> int:
            return server.log_path.read_text().count("produced ")

        start = produced()
        at_cancel, completed_after = _canceled_prediction(client, produced)
        time.sleep(PAUSE_S * CANCEL_CHUNKS)  # let a predictor that was not stopped run out
        end = produced()
        refused = sum(_refused(server.url) for _ in range(BACK_TO_BACK))
    return ProbeResult(timelines, at_cancel - start, end - at_cancel, completed_after, refused)


def _refused(url: str) -> bool:
    """One prediction of one instant chunk, waited for: was it refused with 409?"""
    request = urllib.request.Request(
        f"{url}/predictions",
        data=json.dumps({"input": {"n": 1, "pause": 0.0}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code != 409:
            raise
        return True
    return False


def _two_predictions(client: CogClient) -> list[Timeline]:
    timelines = [Timeline(), Timeline()]
    started = time.perf_counter()

    def follow(index: int) -> None:
        time.sleep(OFFSET_S * index)
        answer = client.start(f"probe-{index}", {"n": CHUNKS})
        if isinstance(answer, Busy):
            timelines[index].status = "409 busy"
            return
        assert isinstance(answer, Started), answer
        for event, data in answer.events():
            if event == "output":
                timelines[index].outputs.append(time.perf_counter() - started)
            elif event == "completed":
                timelines[index].status = str(data.get("status", "completed"))
        answer.close()

    threads = [threading.Thread(target=follow, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return timelines


def _canceled_prediction(client: CogClient, produced: Callable[[], int]) -> tuple[int, float]:
    """Cancel a prediction once its second chunk arrived: ``(produced() at the cancel, seconds
    from the cancel to Cog's completed event)``."""
    answer = client.start("probe-cancel", {"n": CANCEL_CHUNKS})
    assert isinstance(answer, Started), answer
    received, at_cancel, canceled_at = 0, 0, 0.0
    for event, _ in answer.events():
        if event == "output":
            received += 1
            if received == CANCEL_AFTER:
                at_cancel = produced()
                client.cancel("probe-cancel")
                canceled_at = time.perf_counter()
        elif event == "completed":
            break
    answer.close()
    return at_cancel, time.perf_counter() - canceled_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    arguments = parser.parse_args()
    results: dict[str, ProbeResult] = {}
    with tempfile.TemporaryDirectory(prefix="coglet-probe-") as tmp:
        for name, body in PROBES.items():
            results[name] = run_probe(name, body, Path(tmp))
    if arguments.json:
        print(json.dumps({name: asdict(result) for name, result in results.items()}, indent=2))
        return 0
    print(
        f"{CHUNKS} chunks per prediction, {PAUSE_S * 1000:.0f} ms apart; two predictions sent "
        f"{OFFSET_S * 1000:.0f} ms apart; seconds after the first request. Then one of "
        f"{CANCEL_CHUNKS} chunks canceled after its chunk {CANCEL_AFTER}."
    )
    for name, result in results.items():
        print(f"\n{name}")
        for index, timeline in enumerate(result.timelines):
            arrivals = ", ".join(f"{t:.2f}" for t in timeline.outputs) or "-"
            print(f"  prediction {index}: {timeline.status:>10}  outputs at {arrivals}")
        print(
            f"  canceled after chunk {CANCEL_AFTER} arrived: {result.produced_before_cancel} of "
            f"{CANCEL_CHUNKS} chunks produced before the cancel, {result.produced_after_cancel} "
            f"after it; 'completed' {result.cancel_completed_s:.2f} s after it"
        )
        print(
            f"  {BACK_TO_BACK} predictions back to back: {result.refused_back_to_back} refused "
            "with 409"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
