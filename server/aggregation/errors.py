"""The aggregation library's one domain error."""

from __future__ import annotations


class AggregationError(ValueError):
    """A bad strategy name or option, or a batch of updates that cannot be aggregated.

    The message is written for the person who must act on it: it names the client and the
    tensor involved (when there is one) and says what would be accepted instead.
    """

    def __init__(
        self, message: str, *, client_id: str | None = None, tensor: str | None = None
    ) -> None:
        parts = []
        if client_id is not None:
            parts.append(f"client {client_id!r}")
        if tensor is not None:
            parts.append(f"tensor {tensor!r}")
        full = f"{', '.join(parts)}: {message}" if parts else message
        super().__init__(full)
        self.message = full
        self.client_id = client_id
        self.tensor = tensor
