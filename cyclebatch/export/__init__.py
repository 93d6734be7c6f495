"""Export files for other runtimes: `export(net, "model.onnx")` (also .pt, .tflite, .xml), verified.

api.py      export(): ONNX and TorchScript writers, verification against PyTorch, the file's metadata
options.py  the formats and the rules between options (no torch: the CLI checks them first)
tflite.py   TFLite / LiteRT (phones)        openvino.py  OpenVINO IR
"""

from .. import lazy_api

_API = {"export": "api", "ExportResult": "api", "read_metadata": "api", "export_onnx": "api",
        "export_torchscript": "api", "verify": "api"}
__all__ = sorted(_API)
__getattr__ = lazy_api(__name__, _API)
