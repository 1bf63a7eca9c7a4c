"""What one request may ask of the service; the command line's defaults. Imports nothing heavy,
so that `ambsn-serve --help` answers at once."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Limits:
    max_bytes: int = 64 << 20  # request body
    max_pixels: int = 50_000_000  # width x height, read from the header before decoding
    max_queue: int = 32  # jobs waiting; more are refused with 503 and Retry-After
    max_batch: int = 4  # same-shape images per network call (1: no batching)
    timeout_s: float = 300.0  # from arrival to answer; later ones get 504
