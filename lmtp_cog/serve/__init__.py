"""``./serve NAME``: run a built model locally with the real Cog runtime, behind a
Replicate-compatible HTTP API.

The layers, from the wire inwards:

- :mod:`.replicate_api` speaks Replicate's HTTP API (models, versions, predictions, SSE streams);
- :mod:`.runner` queues predictions and copies each one's events from Cog;
- :mod:`.cog_client` speaks Cog's prediction endpoints and reads Cog's own event stream;
- :mod:`.service` starts and stops the whole; :mod:`.cli` and :mod:`.banner` face the user;
- :mod:`.redirect` points clients that hard-code api.replicate.com (LMQL, LiteLLM) here.
"""

from .errors import ProjectNotFoundError, ServeError
from .redirect import redirect_replicate_api
from .service import Served, serve_project

__all__ = [
    "ProjectNotFoundError",
    "ServeError",
    "Served",
    "redirect_replicate_api",
    "serve_project",
]
