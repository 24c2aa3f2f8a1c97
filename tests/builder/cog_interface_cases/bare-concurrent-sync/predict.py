import cog
from cog import BaseRunner, Input, AsyncConcatenateIterator
from typing import Union

class Predictor(BaseRunner):
    @cog.concurrent
    def run(self, x: Union[float, None] = Input(default=2.0, description="y")) -> AsyncConcatenateIterator[str]:
        yield "a"
