"""Tiled translation: equals the full frame, whatever the tile size, in a bounded memory plan."""

import numpy as np
import pytest
import torch

from conftest import PHOTOS, tiny_generator
from cyclebatch.engine import tiling
from cyclebatch.cli.common import parse_memory
from cyclebatch.engine.translator import Translator, estimate_bytes
from cyclebatch.errors import CycleBatchError
from cyclebatch.io.images import read_image

MiB = 2**20


def photo(h: int, w: int) -> np.ndarray:
    return np.ascontiguousarray(read_image(PHOTOS / "china.jpg").rgb[100:100 + h, 200:200 + w])


def full_frame(net, img: np.ndarray) -> torch.Tensor:
    tr = Translator(net, device="cpu", precision="fp32")
    return tr.forward(tr.to_tensor([img]))


def tiled_float(net, img: np.ndarray, **kw) -> torch.Tensor:
    """The tiler's output before 8-bit rounding, captured at the tiler's pixel writer."""
    tr = Translator(net, device="cpu", precision="fp32", **kw)
    h, w = img.shape[:2]
    canvas = torch.full((1, 3, h + 3, w + 3), float("nan"))
    plan = tr.tile_plan(h, w)
    tiler = tiling.Tiler(tr, plan)
    grid = {}

    def to_pixels(y, dtype=np.uint8):
        t = grid["current"]
        canvas[:, :, t.y0:t.y1, t.x0:t.x1] = y
        return Translator.to_pixels(y, dtype)

    original = tiler._pass

    def spy(tiles, fetch, layers, consume):
        def wrapped(t, y):
            # the output pass writes tail tiles; map them back to pixel coordinates
            grid["current"] = tiling.Tile(*(4 * v for v in (t.y0, t.y1, t.x0, t.x1, t.iy0, t.iy1, t.ix0, t.ix1))) \
                if layers is tiler.tail else t
            consume(t, y)
        return original(tiles, fetch, layers, wrapped)

    tiler._pass = spy
    tr.to_pixels = to_pixels
    out = tiler.translate(img)
    assert out.shape == img.shape
    return canvas[:, :, :h, :w]


@pytest.mark.parametrize("n_blocks, tile, context", [(2, 32, 16), (3, 48, 8)])
def test_exact_tiles_equal_the_full_frame(n_blocks, tile, context):
    net = tiny_generator(1, n_blocks=n_blocks, affine_norm=True)
    img = photo(80, 96)
    ref = full_frame(net, img)
    y = tiled_float(net, img, tile=tile, context=context)
    assert not torch.isnan(y).any()
    assert (y - ref).abs().max().item() < 1e-4
    # The naive way (each tile its own statistics) is visibly off: the test can tell the difference.
    naive = Translator(net, device="cpu", precision="fp32", tile=tile, context=context, tile_stats="per-tile")
    expected = Translator.to_pixels(ref)[0].astype(np.int32)
    assert np.abs(naive.translate(img).astype(np.int32) - expected).max() > 10


def test_tile_size_does_not_change_the_output():
    net = tiny_generator(2)
    img = photo(96, 128)
    outs = [Translator(net, device="cpu", precision="fp32", tile=t, context=12).translate(img) for t in (32, 64, 128)]
    for o in outs[1:]:
        assert np.abs(o.astype(np.int32) - outs[0]).max() <= 1


@pytest.mark.parametrize("h, w", [(77, 93), (65, 130), (90, 51)])
def test_output_size_is_exact_for_odd_dimensions(h, w):
    net = tiny_generator(3)
    img = photo(h, w)
    out = Translator(net, device="cpu", precision="fp32", tile=32, context=12).translate(img)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    ref = Translator(net, device="cpu", precision="fp32").translate(img)
    assert np.abs(out.astype(np.int32) - ref).max() <= 1


def test_sixteen_bit_images_stay_sixteen_bit():
    net = tiny_generator(4)
    img = photo(64, 72).astype(np.uint16) * 257
    out = Translator(net, device="cpu", precision="fp32", tile=32, context=12).translate(img)
    ref = Translator(net, device="cpu", precision="fp32").translate(img)
    assert out.dtype == np.uint16 and np.abs(out.astype(np.int64) - ref).max() <= 2


def test_plan_respects_the_memory_budget():
    net = tiny_generator(0, ngf=64, n_blocks=9)
    h, w = 6000, 8000  # 48 MP: its fp32 trunk buffers alone take 6 GiB
    plans = {}
    for budget in (1024 * MiB, 4096 * MiB, 16384 * MiB):
        plan = plans[budget] = tiling.plan_tiles(net, h, w, budget, None, context=64)
        side = plan.tile + 2 * plan.context
        used = tiling.pixel_bytes(h, w) + plan.batch * estimate_bytes(net, side, side, None)
        used += 0 if plan.spill else tiling.buffer_bytes(net, h, w, None)
        assert used <= budget
        assert plan.tile % 4 == 0 and plan.context == 64
    assert plans[1024 * MiB].spill and plans[4096 * MiB].spill and not plans[16384 * MiB].spill
    assert plans[1024 * MiB].tile < plans[4096 * MiB].tile
    with pytest.raises(CycleBatchError, match="memory budget"):
        tiling.plan_tiles(net, h, w, 300 * MiB, None)  # not even the input and output pixels fit


def test_trunk_buffers_spilled_to_disk_give_the_same_output():
    net = tiny_generator(6)
    img = photo(80, 96)
    tr = Translator(net, device="cpu", precision="fp32", max_memory=1 * MiB, context=12)
    assert tr.needs_tiling(80, 96)
    out = tr.translate(img)
    assert tr.last_plan.spill
    ref = Translator(net, device="cpu", precision="fp32").translate(img)
    assert np.abs(out.astype(np.int32) - ref).max() <= 1


def test_engine_tiles_only_when_the_full_frame_exceeds_the_budget():
    net = tiny_generator(0)
    need = estimate_bytes(net, 80, 96, None)
    assert not Translator(net, device="cpu", precision="fp32", max_memory=need + 1).needs_tiling(80, 96)
    tr = Translator(net, device="cpu", precision="fp32", max_memory=need - 1, context=8)
    assert tr.needs_tiling(80, 96) and tr.auto_batch_size(80, 96) == 1
    img = photo(80, 96)
    out = tr.translate_batch([img, img[::-1].copy()])
    assert tr.last_plan is not None  # it went through the tiler
    ref = Translator(net, device="cpu", precision="fp32").translate_batch([img, img[::-1].copy()])
    assert all(np.abs(o.astype(np.int32) - r).max() <= 1 for o, r in zip(out, ref))


def _oom_above(monkeypatch, limit: int) -> list:
    seen = []
    real = tiling._run_layers

    def fake(layers, x):
        seen.append(x.shape[-1])
        if x.shape[-1] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(layers, x)

    monkeypatch.setattr(tiling, "_run_layers", fake)
    return seen


def test_out_of_memory_retries_with_smaller_tiles(monkeypatch):
    net = tiny_generator(5)
    img = photo(64, 96)
    ref = Translator(net, device="cpu", precision="fp32").translate(img)
    _oom_above(monkeypatch, 64)  # 128 px tiles read the whole 96 px width: too wide; 32 px tiles fit
    tr = Translator(net, device="cpu", precision="fp32", tile=128, context=8)
    out = tr.translate(img)
    assert tr.last_plan.tile < 128 and tr.last_plan.batch == 1
    assert np.abs(out.astype(np.int32) - ref).max() <= 1


def test_out_of_memory_at_the_smallest_tile_is_an_error_not_a_blank(monkeypatch):
    _oom_above(monkeypatch, 8)
    tr = Translator(tiny_generator(5), device="cpu", precision="fp32", tile=64, context=8)
    with pytest.raises(CycleBatchError, match="out of memory"):
        tr.translate(photo(64, 64))


def test_other_errors_are_not_mistaken_for_out_of_memory(monkeypatch):
    def broken(layers, x):
        raise RuntimeError("Given groups=1, weight of size [8, 3, 7, 7] (simulated)")

    monkeypatch.setattr(tiling, "_run_layers", broken)
    tr = Translator(tiny_generator(5), device="cpu", precision="fp32", tile=32)
    with pytest.raises(RuntimeError, match="groups"):
        tr.translate(photo(64, 64))


def test_bad_options_are_one_line_errors():
    net = tiny_generator(0)
    with pytest.raises(CycleBatchError, match="tile statistics"):
        Translator(net, device="cpu", tile_stats="thumbnail")
    with pytest.raises(CycleBatchError, match="too small"):
        Translator(net, device="cpu", tile=8)
    assert parse_memory("6G") == 6 * 2**30 and parse_memory("512MiB") == 512 * 2**20
    with pytest.raises(CycleBatchError, match="memory size"):
        parse_memory("lots")
    for bad in ("-5G", "0", "nan", "inf", "-1"):  # each would fail every image later, far from its cause
        with pytest.raises(CycleBatchError, match="positive"):
            parse_memory(bad)


def test_tiling_puts_back_hooks_it_found():
    net = tiny_generator(7)
    marker = lambda norm, x: (torch.zeros(1), torch.ones(1))  # noqa: E731
    for n in net.norms():
        n.stats_hook = marker
    tr = Translator(net, device="cpu", precision="fp32", tile=32, context=8)
    tr.translate(photo(48, 48))
    assert all(n.stats_hook is marker for n in tr.model.norms())


@pytest.mark.slow
def test_cli_tiles_on_request_or_past_the_memory_budget_and_stays_seamless(tmp_path):
    from PIL import Image

    from conftest import run_cli
    from cyclebatch.io.images import read_image

    model = tmp_path / "tiny.pth"
    torch.save(tiny_generator(3).state_dict(), model)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo(300, 380)).save(src / "a.png")

    def translate(name, *flags):
        r = run_cli("run", src, "-o", tmp_path / name, "-m", model, "--precision", "fp32", "-q", *flags)
        assert r.returncode == 0, r.stderr
        return read_image(tmp_path / name / "a.png").rgb.astype(int)

    full = translate("full")
    forced = translate("forced", "--tile", "64")
    budget = translate("budget", "--max-memory", "12M")  # about half the full frame's working set
    # per-tile statistics differ visibly: proof that both flags really sent the image through tiles
    naive_forced = translate("naive1", "--tile", "64", "--tile-stats", "per-tile")
    naive_budget = translate("naive2", "--max-memory", "12M", "--tile-stats", "per-tile")
    assert forced.shape == budget.shape == full.shape == (300, 380, 3)
    assert np.abs(forced - full).max() <= 1 and np.abs(budget - full).max() <= 1
    assert np.abs(naive_forced - full).mean() > 1 and np.abs(naive_budget - full).mean() > 1
    r = run_cli("run", src, "-o", tmp_path / "bad", "-m", model, "--max-memory", "lots")
    assert r.returncode == 2 and "--max-memory" in r.stderr and "Traceback" not in r.stderr
