"""The one error type of loading: every module that reads weights or configs raises it, so a CLI prints it as
one ``error:`` line (exit 2) whatever the format was."""


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line meant for the user."""
