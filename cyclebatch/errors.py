"""The one exception type users see (its message is a single line naming the file and the reason), and
the one test for running out of memory, which engine, tiling and video all retry rather than report."""


class CycleBatchError(Exception):
    """An expected failure (bad file, missing model, unreachable host): shown as one line, no traceback."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A device (or host) allocation failed: the caller retries smaller rather than failing the file."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))
