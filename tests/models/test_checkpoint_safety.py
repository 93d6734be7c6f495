"""Broken checkpoints: malformed safetensors headers and non-finite weights are refused in one line,
without a traceback and without a large allocation."""

import json
import struct

import pytest
import torch

from conftest import run_cli, tiny_generator
from cyclebatch import CycleBatchError, load_generator
from cyclebatch.models.checkpoints import save_generator


def pieces(tmp_path):
    save_generator(tiny_generator(), tmp_path / "good.safetensors")
    raw = (tmp_path / "good.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8:8 + n], raw[8 + n:]


def write(path, header: bytes, data: bytes, n=None):
    path.write_bytes(struct.pack("<Q", len(header) if n is None else n) + header + data)
    return path


def edited(header: dict, which: int, **change) -> bytes:
    h = json.loads(json.dumps(header))
    keys = [k for k in h if k != "__metadata__"]
    if "offsets_of" in change:
        h[keys[which]]["data_offsets"] = h[keys[change.pop("offsets_of")]]["data_offsets"]
    h[keys[which]].update(change)
    return json.dumps(h).encode()


CASES = {
    "header length past the end": lambda h, hb, d: (hb, d, len(hb) + len(d) + 1000),
    "header length 2^62": lambda h, hb, d: (hb, d, 2 ** 62),
    "invalid JSON": lambda h, hb, d: (hb[:-5] + b"xx", d, None),
    "header not an object": lambda h, hb, d: (b'["a", 1]', d, None),
    "offsets outside the data": lambda h, hb, d: (edited(h, 0, data_offsets=[0, 10 * len(d)]), d, None),
    "overlapping tensors": lambda h, hb, d: (edited(h, 1, offsets_of=0), d, None),
    "shape does not match the bytes": lambda h, hb, d: (edited(h, 0, shape=[999, 3, 7, 7]), d, None),
    "dtype does not match the bytes": lambda h, hb, d: (edited(h, 0, dtype="F64"), d, None),
    "unknown dtype": lambda h, hb, d: (edited(h, 0, dtype="Q77"), d, None),
    "huge shape": lambda h, hb, d: (edited(h, 0, shape=[2 ** 40, 2 ** 40]), d, None),
    "data cut short": lambda h, hb, d: (hb, d[: len(d) // 2], None),
    "metadata not JSON": lambda h, hb, d: (json.dumps({**h, "__metadata__": {"cyclebatch": "{oops"}}).encode(), d, None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_safetensors_is_one_line(tmp_path, case):
    header, hb, data = pieces(tmp_path)
    path = write(tmp_path / "bad.safetensors", *CASES[case](header, hb, data))
    with pytest.raises(CycleBatchError) as e:
        load_generator(str(path))
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_models_info_on_malformed_files_prints_no_traceback(tmp_path):
    header, hb, data = pieces(tmp_path)
    for i, case in enumerate(["header length 2^62", "header not an object"]):
        path = write(tmp_path / f"bad{i}.safetensors", *CASES[case](header, hb, data))
        r = run_cli("models", "info", path)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "╭" not in r.stderr, r.stderr
        assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value, layout", [(float("nan"), "pth"), (float("inf"), "safetensors"),
                                           (float("-inf"), "pth")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value, layout):
    net = tiny_generator()
    with torch.no_grad():
        net.model[4].weight[1, 2, 0, 0] = value
    path = tmp_path / f"m.{layout}"
    if layout == "pth":
        torch.save(net.state_dict(), path)
    else:
        save_generator(net, path)
    with pytest.raises(CycleBatchError, match=r"refused: tensor model\.4\.weight holds 1 NaN or infinite"):
        load_generator(str(path))


def test_run_and_models_info_refuse_a_nan_checkpoint(tmp_path):
    net = tiny_generator()
    with torch.no_grad():
        net.model[1].bias[0] = float("nan")
    torch.save(net.state_dict(), tmp_path / "nan.pth")
    r = run_cli("models", "info", tmp_path / "nan.pth")
    assert r.returncode == 1 and "model.1.bias" in r.stderr and "Traceback" not in r.stderr
