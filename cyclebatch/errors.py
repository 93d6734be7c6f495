"""The one exception type users see: its message is a single line naming the file and the reason."""


class CycleBatchError(Exception):
    """An expected failure (bad file, missing model, unreachable host): shown as one line, no traceback."""
