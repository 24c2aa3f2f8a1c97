"""A description written as implicitly concatenated strings, as black formats long ones."""

import cog
from cog import BaseRunner, ConcatenateIterator, Input


class Predictor(BaseRunner):
    @cog.streaming
    def run(
        self,
        prompt: str = Input(
            default="hi",
            description=(
                "The text to continue; "
                "the output streams."
            ),
        ),
    ) -> ConcatenateIterator[str]:
        yield prompt
