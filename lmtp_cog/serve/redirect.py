"""Send clients that hard-code ``https://api.replicate.com`` to a local server instead.

LMQL 0.7.3's Replicate backend (aiohttp) and LiteLLM's Replicate provider (httpx) build their
request URLs from a fixed ``https://api.replicate.com``, with no setting to change it. Within one
Python process, :func:`redirect_replicate_api` rewrites those URLs on their way out, so that
``lmql.model(..., endpoint="replicate:OWNER/NAME")`` talks to ``./serve``. Other URLs are left
alone; the stream URL a prediction returns is already the local one.

    from lmtp_cog.serve.redirect import redirect_replicate_api
    redirect_replicate_api("http://127.0.0.1:8000")     # or: with redirect_replicate_api(...):
"""

from __future__ import annotations

from typing import Any

REPLICATE_API = "https://api.replicate.com"


class ReplicateRedirect:
    """An installed redirect; :meth:`undo` (or leaving its ``with`` block) removes it."""

    def __init__(self, base_url: str) -> None:
        import aiohttp
        import httpx

        self.base_url = base_url.rstrip("/")
        self._patches: list[tuple[type, str, Any]] = []
        self._wrap(aiohttp.ClientSession, "_request", self._aiohttp_request)
        self._wrap(httpx.Client, "build_request", self._httpx_build_request)
        self._wrap(httpx.AsyncClient, "build_request", self._httpx_build_request)

    def rewrite(self, url: str) -> str:
        """``url`` with ``https://api.replicate.com`` replaced by the local base URL."""
        if url == REPLICATE_API or url.startswith(REPLICATE_API + "/"):
            return self.base_url + url[len(REPLICATE_API) :]
        return url

    def undo(self) -> None:
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._patches.clear()

    def __enter__(self) -> ReplicateRedirect:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def _wrap(self, owner: type, name: str, make: Any) -> None:
        original = getattr(owner, name)
        self._patches.append((owner, name, original))
        setattr(owner, name, make(original))

    def _aiohttp_request(self, original: Any) -> Any:
        async def _request(session: Any, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
            return await original(session, method, self.rewrite(str(url)), *args, **kwargs)

        return _request

    def _httpx_build_request(self, original: Any) -> Any:
        # Rewrite the built request: a client with a base_url passes relative URLs in.
        def build_request(client: Any, *args: Any, **kwargs: Any) -> Any:
            import httpx

            request = original(client, *args, **kwargs)
            url = self.rewrite(str(request.url))
            if url != str(request.url):
                request.url = httpx.URL(url)
                request.headers["Host"] = request.url.netloc.decode()
            return request

        return build_request


def redirect_replicate_api(base_url: str) -> ReplicateRedirect:
    """Rewrite ``https://api.replicate.com`` to ``base_url`` in aiohttp and httpx requests."""
    return ReplicateRedirect(base_url)
