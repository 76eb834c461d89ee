"""Counts and quoted errors in messages, spelled once."""


def count_text(count, noun: str) -> str:
    """"1 epoch", "3 epochs": ``count`` and ``noun`` in the plural unless the count is one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def first_line(exc: BaseException, limit: int) -> str:
    """The first line of ``exc``'s message ("" when it has none), cut to ``limit`` characters
    with "..." where cut: how one error is quoted inside another line."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."
