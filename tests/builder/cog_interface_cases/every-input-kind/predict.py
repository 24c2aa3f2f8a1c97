from typing import Optional, Iterator
import cog as c
from cog import BasePredictor, Input

N = 5
DESC = "a constant description"

class Predictor(BasePredictor):
    def setup(self) -> None:
        pass

    def predict(self, n: int = Input(default=N, ge=1, le=10, description=DESC),
                name: Optional[str] = None,
                flag: bool = True,
                pick: str = Input(default="x", choices=["x", "y"]),
                ratio: float = Input(default=-1.5, ge=-2),
                must: str = Input(description="required one"),
                text: str = Input(default="hi", min_length=1, max_length=9, regex="^h"),
                old: int = Input(default=3, deprecated=True),
                ) -> Iterator[int]:
        yield n
