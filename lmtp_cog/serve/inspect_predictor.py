"""``python -m lmtp_cog.serve.inspect_predictor FILE.py:CLASS OUT``, run in a project folder.

Describes the predictor with the Cog SDK's own introspection and writes its OpenAPI schema to
OUT. It runs as a child process of :func:`~lmtp_cog.serve.openapi.write_openapi_schema` because
importing ``predict.py`` imports the model's runtime, and every project's module is named
``predict``. A failure is one line on stderr, for the parent to report.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from .openapi import openapi_schema


def main(argv: list[str]) -> int:
    predictor_ref, out = argv
    module_file, _, class_name = predictor_ref.partition(":")
    # The project folder is the working directory, which `python -m` puts first on sys.path.
    from cog import _inspector

    with warnings.catch_warnings():
        # predict() and BasePredictor are deprecated names in cog 0.23; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            info = _inspector.create_predictor(module_file.removesuffix(".py"), class_name)
        except Exception as error:  # noqa: BLE001 - reported to the parent as one line
            print(f"{type(error).__name__}: {error}", file=sys.stderr)
            return 1
    Path(out).write_text(json.dumps(openapi_schema(info), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
