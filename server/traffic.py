"""Running totals of what the server sent, kept as plain integers for metrics to read.

They are added to where data leaves in batches (a fan-out flush, a join's dump, a catch-up,
one CL4 message), never per recipient of a shared frame: a flush that writes one frame to 500
members adds 500 frames with one multiplication. Reading them costs nothing until someone
asks (`Server.stats`, the metrics page).
"""

from __future__ import annotations


class Traffic:
    """What the server wrote to WebSocket clients: data frames, their bytes, update lines.

    `updates_sent` counts variable-update lines written to clients (one frame may carry many);
    frames and bytes also count protocol messages sent on their own (CL4). Control frames
    (ping, pong, close) and HTTP responses are not counted.
    """

    __slots__ = ("frames_sent", "bytes_sent", "updates_sent")

    def __init__(self) -> None:
        self.frames_sent = 0
        self.bytes_sent = 0
        self.updates_sent = 0

    def sent(self, frames: int, size: int, updates: int = 0) -> None:
        """`frames` frames of `size` bytes in all, carrying `updates` update lines in all."""
        self.frames_sent += frames
        self.bytes_sent += size
        self.updates_sent += updates
