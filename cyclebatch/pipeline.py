"""Old path of cyclebatch.run.pipeline, kept for one release: `from cyclebatch.pipeline import translate_paths`
(as earlier READMEs showed) keeps working. New code: `from cyclebatch import translate_paths`."""

from .run.pipeline import *  # noqa: F401,F403
from .run.pipeline import RunOptions, Summary, translate_paths  # noqa: F401
