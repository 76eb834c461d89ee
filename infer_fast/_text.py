"""Counts and quoted errors in messages, spelled once."""


def count_text(count, noun: str) -> str:
    """"1 epoch", "3 epochs": ``count`` and ``noun`` in the plural unless the count is one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def first_names(names, shown: int) -> str:
    """The first ``shown`` of ``names`` joined by commas, with ", ..." where there are more: how a
    message lists what it refuses without printing a thousand names."""
    names = [str(name) for name in names]
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def checkpoints_held(folder_named: str, names) -> str:
    """The refusal of a checkpoints folder that holds ``names`` when no resume was asked: one
    wording for the library (student.evaluate_seeds) and the CLI (train, evaluate)."""
    return f"{folder_named} holds {first_names(names, 3)}: resume to continue them (--resume), or delete them"


def first_line(exc: BaseException, limit: int) -> str:
    """The first line of ``exc``'s message ("" when it has none), cut to ``limit`` characters
    with "..." where cut: how one error is quoted inside another line."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."
