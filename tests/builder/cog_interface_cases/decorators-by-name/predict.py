from cog import BaseRunner, Input, streaming, concurrent
from typing import Iterator

class Predictor(BaseRunner):
    @streaming
    @concurrent(max=4)
    async def run(self, x: int | None = Input(default=None)) -> Iterator[str]:
        return "a"
