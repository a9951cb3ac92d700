"""User-facing errors: one clear paragraph that names the problem and the fix."""


class GentrainError(Exception):
    """An error caused by the user's input (config, data, checkpoint, device).

    The CLI prints the message as one paragraph and exits with status 2, without a traceback.
    Raise it wherever bad input is first recognised, with a message that says what is wrong
    and what to do about it.
    """


def require(ok: bool, message: str) -> None:
    """Raise :class:`GentrainError` with ``message`` unless ``ok``."""
    if not ok:
        raise GentrainError(message)
