"""The shape that broke the image: a default imported from another module."""

import cog
from cog import BaseRunner, ConcatenateIterator, Input

from settings_module import DEFAULT_MAX_NEW_TOKENS


class Predictor(BaseRunner):
    @cog.streaming
    def run(
        self,
        prompt: str | None = Input(default=None, description="The prompt."),
        max_new_tokens: int = Input(default=DEFAULT_MAX_NEW_TOKENS, ge=1),
    ) -> ConcatenateIterator[str]:
        yield ""
