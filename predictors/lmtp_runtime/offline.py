"""Keep the runtime off the network: the weights are baked into the image.

This module imports nothing heavy on purpose: :mod:`.predictor` enters :func:`hub_offline`
*before* the first import of transformers (and with it huggingface_hub), which reads the
variables once, at import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextmanager
def hub_offline() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` for the duration, then restore them.

    Inside a Cog container transformers is first imported within this block, which makes the
    whole server process offline for good. Restoring the variables afterwards keeps a test
    process (which may talk to a local stand-in Hub later, or spawn builds) unaffected; there,
    ``local_files_only=True`` on every load is what keeps loading off the network.
    """
    saved = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    os.environ.update({name: "1" for name in OFFLINE_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
