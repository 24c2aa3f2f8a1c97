"""``lmtp-cog``, the one command line: ``build``, ``serve``, ``list`` and ``demo``.

Argument parsing and error printing only; the work happens in :mod:`.build`, :mod:`.serve` and
:mod:`.demo`. ``./build`` and ``./serve`` in a checkout are shims for ``lmtp-cog build`` and
``lmtp-cog serve``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import LmtpCogError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


COMMANDS = {
    "build": "turn the models of config.toml into Cog projects in work/NAME",
    "serve": "run a built model on this machine, behind a Replicate-compatible API",
    "list": "list the models of config.toml",
    "demo": "build the bundled example model, serve it and query it (offline)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """``lmtp-cog COMMAND [ARGS]``; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command, rest = (arguments[0], arguments[1:]) if arguments else (None, [])
    if command == "build":
        return build_main(rest)
    if command == "serve":
        from .serve.command import main as serve_main

        return serve_main(rest)
    if command == "list":
        return list_main(rest)
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    parser = _command_parser()
    if command in ("-h", "--help"):
        parser.print_help()
        return 0
    if command == "--version":
        print(f"lmtp-cog {__version__}")
        return 0
    parser.print_usage(sys.stderr)
    known = ", ".join(COMMANDS)
    got = f"unknown command {command!r}" if command else "no command"
    print(f"error: {got}; give one of {known} (lmtp-cog --help says more).", file=sys.stderr)
    return EXIT_USAGE


def _command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmtp-cog",
        description="Build Hugging Face language models into Cog models that speak LMQL's LMTP.",
        epilog="Each command has its own --help.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    parser.add_argument("--version", action="version", version=f"lmtp-cog {__version__}")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmtp-cog build",
        description=(
            "Turn the models in config.toml into Cog projects in work/NAME that serve LMQL's "
            "LMTP protocol. Resolves each model's revision to a commit, fetches only the files "
            "loading needs, and renders cog.yaml, predict.py, the runtime, README.md and push."
        ),
    )
    parser.add_argument(
        "--config", type=Path, default=Path("config.toml"), metavar="PATH",
        help="the configuration file (default: ./config.toml)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, metavar="DIR",
        help="where projects are written (default: ./work, where ./serve looks too)",
    )
    parser.add_argument(
        "--only", nargs="+", default=(), metavar="NAME",
        help="build only these models",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print what would be fetched and written, and change nothing",
    )
    parser.add_argument(
        "--offline", action="store_true",
        help="use only the local Hugging Face cache (no network)",
    )
    parser.add_argument(
        "--update", action="store_true",
        help="re-resolve revisions instead of using the commits in the lock file",
    )
    parser.add_argument(
        "--prequantize", action="store_true",
        help="for 8-bit/4-bit models, ship weights quantized now instead of at every boot",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="build into a work/NAME folder ./build did not make (its other files are kept)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the models in the configuration and exit",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and tracebacks")
    parser.add_argument("--version", action="version", version=f"lmtp-cog {__version__}")
    return parser


def build_main(argv: Sequence[str]) -> int:
    """``lmtp-cog build``: build the models, or list them with ``--list``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.list:
            return _list_models(args.config)
        from .build import BuildOptions, build

        if not args.verbose:
            # huggingface_hub (imported just now, which sets its own level) warns about what it
            # works around, such as a cache it cannot update; what matters reaches the user as
            # the build's own one-sentence error.
            logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        if not sys.stderr.isatty():
            # Progress bars are for a terminal; in a log they are noise between the lines.
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()

        build(
            BuildOptions(
                config_path=args.config,
                work_dir=args.work_dir,
                only=tuple(args.only),
                dry_run=args.dry_run,
                offline=args.offline,
                update=args.update,
                prequantize=args.prequantize,
                force=args.force,
            ),
            report=_say,
        )
    except LmtpCogError as error:
        if args.verbose:
            logging.exception("build failed")
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: work/ was left as it was.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def list_main(argv: Sequence[str]) -> int:
    """``lmtp-cog list [--config PATH]``: one line per model of config.toml."""
    parser = argparse.ArgumentParser(prog="lmtp-cog list", description=COMMANDS["list"])
    parser.add_argument(
        "--config", type=Path, default=Path("config.toml"), metavar="PATH",
        help="the configuration file (default: ./config.toml)",
    )
    args = parser.parse_args(argv)
    try:
        return _list_models(args.config)
    except LmtpCogError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR


def _list_models(config_path: Path) -> int:
    from .config import load_config

    config = load_config(config_path)
    for model in config.models:
        revision = f"@{model.source.revision}" if model.source.revision else ""
        _say(f"{model.name}\t{model.source.repo}{revision}\t{model.args.quantization}")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
