"""What the Cog runtime (coglet) does with a predictor's output, measured on the real server.

    .venv/bin/python bench/coglet_probe.py

The design of concurrent predictions rests on two questions this answers with timestamps:

1. Does coglet stream the chunks of an *async* generator as they are yielded, or send them at the
   end? (A sync generator streams; concurrency above 1 requires an async predict.)
2. With ``@cog.concurrent(max=N)``, do predictions run at the same time (so a batcher inside the
   container can merge their work), or one after another?

Each probe is a tiny predictor written to a temporary folder and served by the real Cog server
(``lmtp_cog.cogserver.CogServer``), with the OpenAPI schema ``cog build`` would write, so that
server-sent events work. Two predictions are started 50 ms apart; each yields 5 chunks, 200 ms
apart. The table gives, per prediction, when each ``output`` event arrived, in seconds after the
first request was sent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmtp_cog.cogserver import CogServer  # noqa: E402
from lmtp_cog.serve.cog_client import Busy, CogClient, Started  # noqa: E402
from lmtp_cog.serve.openapi import write_openapi_schema  # noqa: E402

CHUNKS = 5
PAUSE_S = 0.2
OFFSET_S = 0.3
SET_ENV = True

PROBES = {
    "sync generator, concurrency 1": (
        "",
        """
        def predict(self, n: int = 5) -> Iterator[str]:
            for index in range(n):
                time.sleep(PAUSE)
                yield f"chunk {index}"
        """,
        1,
    ),
    "async generator, @cog.concurrent(max=4)": (
        "",
        """
        @concurrent(max=4)
        async def predict(self, n: int = 5) -> AsyncIterator[str]:
            for index in range(n):
                await asyncio.sleep(PAUSE)
                yield f"chunk {index}"
        """,
        4,
    ),
    "coroutine returning a sync generator, @cog.concurrent(max=4)": (
        "",
        """
        @concurrent(max=4)
        async def predict(self, n: int = 5) -> Iterator[str]:
            def chunks():
                for index in range(n):
                    time.sleep(PAUSE)
                    yield f"chunk {index}"
            return chunks()
        """,
        4,
    ),
}

HEADER = f"""
import asyncio
import time
from typing import AsyncIterator, Iterator

from cog import BasePredictor, concurrent

PAUSE = {PAUSE_S}


class Predictor(BasePredictor):
    def setup(self) -> None:
        pass
"""


@dataclass
class Timeline:
    """When each output chunk of one prediction arrived."""

    outputs: list[float] = field(default_factory=list)
    status: str = ""


def run_probe(name: str, body: str, concurrency: int, workdir: Path) -> list[Timeline]:
    project = workdir / name.replace(" ", "-").replace(",", "").replace("@", "").replace("(", "")
    project = project.with_name(project.name.replace(")", "").replace("=", ""))
    project.mkdir()
    source = HEADER + textwrap.indent(textwrap.dedent(body), "    ")
    (project / "predict.py").write_text(source)
    write_openapi_schema(project)
    env = {"COG_MAX_CONCURRENCY": str(concurrency)} if SET_ENV else {}
    with CogServer(project, env=env) as server:
        server.wait_ready(timeout=60)
        client = CogClient(server.url)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the timelines as JSON")
    arguments = parser.parse_args()
    results: dict[str, list[Timeline]] = {}
    with tempfile.TemporaryDirectory(prefix="coglet-probe-") as tmp:
        for name, (_, body, concurrency) in PROBES.items():
            results[name] = run_probe(name, body, concurrency, Path(tmp))
    if arguments.json:
        print(json.dumps({k: [t.__dict__ for t in v] for k, v in results.items()}, indent=2))
        return 0
    print(f"{CHUNKS} chunks per prediction, {PAUSE_S * 1000:.0f} ms apart; two predictions "
          f"sent {OFFSET_S * 1000:.0f} ms apart; seconds after the first request")
    for name, timelines in results.items():
        print(f"\n{name}")
        for index, timeline in enumerate(timelines):
            arrivals = ", ".join(f"{t:.2f}" for t in timeline.outputs) or "-"
            print(f"  prediction {index}: {timeline.status:>10}  outputs at {arrivals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
