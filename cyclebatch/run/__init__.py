"""Folders of images: `translate_paths(inputs, output, translator)`.

pipeline.py     discover -> decode pool -> batches by size -> model -> writer pool, and the summary
rayrun.py       the same pipeline in Ray Data actors (run --ray)
distributed.py  torchrun ranks and the combined summary        report.py  OUT/report.html
"""

from .. import lazy_api

_API = {"translate_paths": "pipeline", "RunOptions": "pipeline", "Summary": "pipeline", "Reporter": "pipeline"}
__all__ = sorted(_API)
__getattr__ = lazy_api(__name__, _API)
