"""``./serve NAME``: run a built model locally with the real Cog runtime, behind a
Replicate-compatible HTTP API, an OpenAI-compatible one and LMQL's LMTP websocket.

The layers, from the wire inwards:

- :mod:`.http_server` runs ./serve's one aiohttp application (:mod:`.app`) on its sockets, from
  an event loop of its own; :mod:`.middleware`, :mod:`.request_body` and :mod:`.problems` read
  every request's body and answer every error;
- :mod:`.replicate_api` speaks Replicate's HTTP API (models, versions, predictions, SSE streams);
- :mod:`.openai_routes` speaks OpenAI's (completions, chat completions), which
  :mod:`.openai_requests` checks and :mod:`.openai_api` maps onto LMTP, with the model's own
  tokenizer (:mod:`.tokenizer`);
- :mod:`.lmtp_websocket` speaks LMQL's native LMTP websocket (:mod:`.lmtp_frames`);
- :mod:`.runner` queues every API's predictions and copies each one's events from Cog
  (:mod:`.prediction`), while :mod:`.health` watches Cog;
- :mod:`.cog_client` speaks Cog's prediction endpoints and reads Cog's own event stream;
- :mod:`.service` starts and stops the whole; :mod:`.command` and :mod:`.banner` face the user;
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
