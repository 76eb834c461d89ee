"""Counts in messages, spelled once."""


def count_text(count, noun: str) -> str:
    """"1 epoch", "3 epochs": ``count`` and ``noun`` in the plural unless the count is one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
