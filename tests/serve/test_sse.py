"""SSE framing: what we send is what Replicate sends, and what Cog sends parses back exactly."""

from __future__ import annotations

from lmtp_cog.serve.sse import Event, format_event, parse_events


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def test_multi_line_data_becomes_one_data_line_per_line() -> None:
    chunk = 'TOKEN {"stream_id": 1}\nTOKEN {"stream_id": 2}\n'

    wire = format_event(Event("output", chunk, "7")).decode()

    assert wire == (
        "id: 7\n"
        "event: output\n"
        'data: TOKEN {"stream_id": 1}\n'
        'data: TOKEN {"stream_id": 2}\n'
        "data: \n"
        "\n"
    )


def test_a_payload_survives_the_round_trip_byte_for_byte() -> None:
    events = [
        Event("output", "one line, no newline", "0"),
        Event("output", "TOKEN {}\nMSG {}\n", "1"),
        Event("logs", "  leading spaces and a colon: kept", "2"),
        Event("done", "{}", "3"),
    ]

    wire = b"".join(format_event(event) for event in events)

    assert list(parse_events(_lines(wire))) == events


def test_comments_are_skipped_and_an_unnamed_event_is_a_message() -> None:
    wire = b": keep-alive\n\ndata: hello\r\n\r\nevent: start\ndata: {}\n\n"

    assert list(parse_events(_lines(wire))) == [
        Event("message", "hello"),
        Event("start", "{}"),
    ]


def test_every_line_break_a_client_may_split_at_starts_a_data_line() -> None:
    """A raw CR cannot travel inside a data line, and the replicate client (httpx) also splits
    at VT, FF, FS, GS, RS, NEL, LS and PS: each one starts a new ``data:`` line."""
    text = "a\rb\r\nc\nd\x0be\x0cf\x1cg\x1dh\x1ei\x85j\u2028k\u2029l\r"

    wire = format_event(Event("output", text, "3"))

    data_lines = wire.decode().split("\n")[2:-2]
    assert data_lines == [f"data: {letter}" for letter in "abcdefghijkl"] + ["data: "]
    assert b"\r" not in wire
    (parsed,) = parse_events(_lines(wire))
    assert parsed.data == "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\nl\n"
