"""Videos and frame folders: `translate_video(src, dst, translator)`.

api.py       translate_video: checks, the pipeline, atomic outputs   sources.py / sinks.py  decode / encode
pipeline.py  decode -> model -> finish -> encode threads              device.py  colour conversion on the GPU
finish.py    working size, the temporal stabiliser, comparison panels   colour.py  YUV 4:2:0 <-> RGB in torch
temporal.py  the flow stabiliser (the default)   shared_stats.py  one shot's InstanceNorm statistics (--temporal stats)
"""

from .. import lazy_api

_API = {"translate_video": "api", "VideoResult": "api", "check_video_job": "api"}
__all__ = sorted(_API)
__getattr__ = lazy_api(__name__, _API)
