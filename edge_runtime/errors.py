"""Errors that end a command with one clear line instead of a traceback."""


class GladEdgeError(Exception):
    """A user-facing failure: bad input file, bad config, refused bundle."""


class UsageError(GladEdgeError):
    """Command-line flags that cannot work together, or a flag value out of range: the CLI exits 2 (usage),
    like argparse's own refusals, where other failures exit 1."""
