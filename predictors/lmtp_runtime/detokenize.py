"""Streaming text out of streamed tokens: whole characters only, and no stop sequence leaked.

Two small state machines, fed one piece at a time:

- :class:`IncrementalDetokenizer` turns token ids into text as they come. A token is not a
  character: byte-level tokenizers split ``é`` (2 bytes) or an emoji (4 bytes) over several
  tokens, and a lone piece decodes to U+FFFD. So it decodes a short window of recent ids and
  emits only the text that grew, holding back a trailing U+FFFD until the next token completes
  the character (or generation ends).
- :class:`StopSequenceFilter` passes that text on, holding back any tail that could be the start
  of a stop sequence, and stops at the first one that appears: the client sees the text before
  it, never the stop sequence itself, not even a prefix of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT_CHARACTER = "\ufffd"


class IncrementalDetokenizer:
    """Token ids in, new text out; the pieces add up to ``decode(all ids)``.

    Decoding the whole growing list at every step would cost O(n²). Instead the decoded window
    starts a few tokens back (at the start of the previous emitted piece), which gives the
    decoder the context it needs (SentencePiece's leading spaces, byte sequences), and the new
    text is the window's text beyond what that same window decoded to before. This is the
    scheme of vLLM and Hugging Face TGI. Special tokens are skipped; tokenization spaces are not
    "cleaned up", a lossy heuristic that would make a window's text differ from its prefix's.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._window_start = 0
        """Where the decoded window starts: the first id of the previous emitted piece."""
        self._emitted_end = 0
        """The ids before this index have all been emitted as text."""

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text that is now complete (often ``""``)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Generation ended: return whatever is held back, incomplete characters included."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        before = self._decode(self._ids[self._window_start : self._emitted_end])
        text = self._decode(self._ids[self._window_start :])
        if len(text) <= len(before):
            return ""  # e.g. a special token, which decodes to nothing
        if text.endswith(REPLACEMENT_CHARACTER) and not final:
            return ""  # a character split over tokens: wait for its other bytes
        self._window_start, self._emitted_end = self._emitted_end, len(self._ids)
        return text[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )


class StopSequenceFilter:
    """Text in, text out, cut before the first stop sequence; :attr:`stopped` says it was found."""

    def __init__(self, stop_sequences: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stop_sequences if stop)
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add generated text; return what can be shown now.

        Once a stop sequence appears, returns the text before it and sets :attr:`stopped`;
        everything after is dropped.
        """
        if self.stopped:
            return ""
        self._pending += text
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            shown, self._pending = self._pending[:cut], ""
            return shown
        keep = self._held_back()
        shown = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(shown) :]
        return shown

    def flush(self) -> str:
        """Generation ended without a stop sequence: the held-back tail was not one after all."""
        shown, self._pending = ("" if self.stopped else self._pending), ""
        return shown

    def _first_stop(self) -> int | None:
        found = [index for stop in self._stops if (index := self._pending.find(stop)) >= 0]
        return min(found, default=None)

    def _held_back(self) -> int:
        """The length of the longest tail of the pending text that begins some stop sequence."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:length]):
                    longest = length
                    break
        return longest
