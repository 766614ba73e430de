"""Errors that Patcher reports to the user as one line with exit code 2."""


class PatcherInputError(Exception):
    """Bad input from the user (file, flag, checkpoint): the CLI prints one line and exits 2."""
