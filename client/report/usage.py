"""The server's token counts (`usage`) against the client's own: agreement, for the report."""

from __future__ import annotations

from typing import Any

__all__ = ["usage_check"]


def usage_check(values: dict[str, float]) -> dict[str, Any] | None:
    """How the server's `usage` compares with the client's own counts (None: no usage sent).

    Output: replies whose completion_tokens differ from the token chunks received. Prompt: the
    offset server - client (BOS, chat-template tokens) and whether it was the same on every
    request; a varying offset means the client's prompt counts are not the server's.
    """
    n = values.get("usage_reported", 0.0)
    if not n or "usage_output_mismatches" not in values:
        return None
    mean = values.get("usage_input_offset", 0.0) / n
    var = max(values.get("usage_input_offset_sq", 0.0) / n - mean * mean, 0.0)
    mismatches = int(values["usage_output_mismatches"])
    return {"requests": int(n), "output_mismatches": mismatches,
            "prompt_offset_mean": round(mean, 3), "prompt_offset_sd": round(var ** 0.5, 3),
            "agree": mismatches == 0 and var < 1e-9}
