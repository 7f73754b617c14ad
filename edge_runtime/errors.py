"""Errors that end a command with one clear line instead of a traceback."""


class GladEdgeError(Exception):
    """A user-facing failure: bad input file, bad config, refused bundle."""
