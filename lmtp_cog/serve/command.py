"""``./serve NAME``: argument parsing, the banner, signals and error printing; the work is in
:mod:`.service`.

What it prints, in order: which build it serves, that the Cog server starts (with its log), the
lines ``setup()`` prints as it loads the model (and, when it is quiet for long, that it still
runs), then the banner. If the Cog server or its worker dies, before or after the banner, one
``error:`` line says so and names the log, and ./serve exits with status 1 (it does not restart
the server).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from ..cogserver import CogServer, CogSetupTimeoutError
from ..errors import LmtpCogError
from ..paths import DEFAULT_WORK_DIR
from .banner import banner
from .errors import ServeError
from .lmtp_websocket import LMQL_DEFAULT_PORT
from .project import find_project, read_build_info
from .service import DEFAULT_HOST, DEFAULT_SETUP_TIMEOUT, Served, serve_project
from .setup_log import DEFAULT_QUIET_SECONDS, SetupProgress

EXIT_ERROR = 1
DEFAULT_PORT = 8000


class _Stop(Exception):
    """Raised in the main thread by SIGTERM and SIGINT (Ctrl-C).

    SIGINT gets the handler too: a shell starts background jobs with SIGINT ignored, and Python
    then never turns it into KeyboardInterrupt.
    """


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmtp-cog serve",
        description=(
            "Run a model built by ./build on this machine with the real Cog runtime (no Docker), "
            "behind a Replicate-compatible HTTP API: LMQL, the replicate Python client and curl "
            "talk to it as they would to api.replicate.com. OpenAI's clients and LiteLLM use the "
            "OpenAI-compatible API on the same port, under /openai/v1. LMQL can also use its "
            "native LMTP websocket endpoint, as served by `lmql serve-model`."
        ),
    )
    parser.add_argument("name", metavar="NAME", help="the model, as named in config.toml")
    parser.add_argument(
        "--work-dir", type=Path, default=DEFAULT_WORK_DIR, metavar="DIR",
        help="where ./build put the projects (default: ./work)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST,
        help=(
            f"the address of the API and the LMTP websocket (default: {DEFAULT_HOST}; "
            "there is no authentication)"
        ),
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT,
        help=(
            f"the port of the Replicate- and OpenAI-compatible APIs (default: {DEFAULT_PORT}; "
            "0 picks a free one)"
        ),
    )
    parser.add_argument(
        "--lmtp-port", type=int, default=LMQL_DEFAULT_PORT, metavar="PORT",
        help=(
            "the port of the LMTP websocket endpoint for lmql.model(..., endpoint='HOST:PORT') "
            f"(default: {LMQL_DEFAULT_PORT}, LMQL's default endpoint; 0 picks a free one)"
        ),
    )
    parser.add_argument(
        "--cog-port", type=int, default=None, metavar="PORT",
        help="the Cog server's port on 127.0.0.1 (default: a free one)",
    )
    parser.add_argument(
        "--setup-timeout", type=float, default=DEFAULT_SETUP_TIMEOUT, metavar="SECONDS",
        help=f"how long the model's setup() may take (default: {DEFAULT_SETUP_TIMEOUT:.0f})",
    )
    parser.add_argument(
        "--quiet-setup-seconds", type=float, default=DEFAULT_QUIET_SECONDS, metavar="SECONDS",
        help=(
            "while setup() runs, say that it still does after this many seconds without a line "
            f"from it (default: {DEFAULT_QUIET_SECONDS:.0f})"
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("lmtp_cog.serve").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        _serve(args)
    except LmtpCogError as error:
        if args.verbose:
            logging.exception("serve failed")
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except _Stop:
        print("\nstopped: the API and the Cog server are down.", flush=True)
        return 0


def _serve(args: argparse.Namespace) -> NoReturn:
    """Serve until a signal stops it (``_Stop``) or the Cog server dies (``ServeError``)."""
    project = find_project(args.work_dir, args.name)
    _say(f"serving {read_build_info(project).describe()}")
    started = time.monotonic()
    # The setup lines of the Cog server's log, shown while setup() runs; None before the server
    # starts and once setup is over (what the log gets later is the predictions').
    progress: SetupProgress | None = None
    log_path = "the Cog server's log"

    def announce(cog: CogServer) -> None:
        nonlocal progress, log_path
        pid = cog.process.pid if cog.process is not None else "?"
        _say(
            f"starting the Cog server (pid {pid}) for {args.name}; setup() loads the model "
            f"(log: {cog.log_path})"
        )
        log_path = str(cog.log_path)
        progress = SetupProgress(cog.log_path, say=_say, quiet_seconds=args.quiet_setup_seconds)

    def setup_wait(waited: float) -> None:
        if progress is not None:
            progress(waited)

    def setup_over() -> None:
        """Show the setup lines not shown yet, once: setup() ended, one way or another."""
        nonlocal progress
        if progress is not None:
            progress.flush()
            progress = None

    try:
        with serve_project(
            project,
            host=args.host,
            port=args.port,
            cog_port=args.cog_port,
            lmtp_port=args.lmtp_port,
            setup_timeout=args.setup_timeout,
            on_cog_started=announce,
            on_setup_wait=setup_wait,
        ) as served:
            setup_over()
            _say(banner(served, project_dir=project, startup_seconds=time.monotonic() - started))
            raise ServeError(_wait_until_down(served))
    except CogSetupTimeoutError:
        raise ServeError(
            f"setup() of {args.name} did not finish within {args.setup_timeout:g} s (allow it "
            f"more with --setup-timeout SECONDS); see {log_path}."
        ) from None
    finally:
        setup_over()


def _wait_until_down(served: Served) -> str:
    """Block until the Cog server or its worker died (signals still interrupt); why."""
    while True:
        why = served.wait_until_down(timeout=0.5)
        if why is not None:
            return why


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # Once: a second Ctrl-C must not cut the shutdown of the servers short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Stop()


def _say(text: str) -> None:
    print(text, flush=True)
