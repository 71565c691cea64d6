"""Throughput of the compiled event codec: encode, decode from bytes, decode from a memoryview."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from duro._core.codec import ACTIVITY_COMPLETED, decode_event, encode_event

LOOPS = 200_000
REPEATS = 7

# A small, typical event: an activity result with a short name and a JSON-sized payload.
TYPE, EVENT_ID, TIMESTAMP_US, REF, ATTEMPT = ACTIVITY_COMPLETED, 5, 1_700_000_000_000_000, 2, 1
NAME, PAYLOAD = "charge", b'{"ok":true,"id":42}'


def _per_second(loop: Callable[[int], None]) -> float:
    """Run ``loop(LOOPS)`` REPEATS times (after one warm-up) and return the median rate."""
    loop(LOOPS // 10)
    rates = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        loop(LOOPS)
        rates.append(LOOPS / (time.perf_counter() - start))
    return statistics.median(rates)


def _encode(n: int) -> None:
    enc = encode_event
    for _ in range(n):
        enc(TYPE, EVENT_ID, TIMESTAMP_US, REF, ATTEMPT, NAME, PAYLOAD)


def _make_decode(buffer: bytes | memoryview) -> Callable[[int], None]:
    def _decode(n: int) -> None:
        dec = decode_event
        for _ in range(n):
            dec(buffer)

    return _decode


def main() -> None:
    envelope = encode_event(TYPE, EVENT_ID, TIMESTAMP_US, REF, ATTEMPT, NAME, PAYLOAD)
    result = {
        "encode_per_s": round(_per_second(_encode)),
        "decode_per_s": round(_per_second(_make_decode(envelope))),
        "decode_memoryview_per_s": round(_per_second(_make_decode(memoryview(envelope)))),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
