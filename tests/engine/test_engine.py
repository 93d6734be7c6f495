"""The engine's decisions that a GPU user depends on, tested where a CPU can stand in for the GPU:
memory read once per size, out-of-memory handling, batch sizes that reach the model, non-finite output,
transfer widths, layout and autotuning choices, torchrun's device per rank."""

import gc
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PHOTOS, run_cli, tiny_generator
from cyclebatch.engine import memory
from cyclebatch.engine.passes import quantize
from cyclebatch.models.checkpoints import save_generator
from cyclebatch.engine.translator import Translator, device_free_bytes, use_channels_last
from cyclebatch.run.pipeline import translate_paths
from cyclebatch.engine.tiling import RunningStats


def photos(n: int, size=(48, 40)) -> list[np.ndarray]:
    im = Image.open(PHOTOS / "chelsea.png").convert("RGB")
    w, h = im.size
    out = []
    for i in range(n):  # n different crops, so that a mix-up between images would show
        box = (i * 7, i * 5, i * 7 + w // 2, i * 5 + h // 2)
        out.append(np.asarray(im.crop(box).resize(size, Image.BICUBIC)))
    return out


def fp32_translator(**kw) -> Translator:
    return Translator(tiny_generator(), device="cpu", precision="fp32", **kw)


# ---------------------------------------------------------------- memory and batch sizes


def test_free_memory_is_read_once_per_image_size(monkeypatch):
    reads = []

    def shrinking():  # each read sees less: the caching allocator's reserve, another process
        reads.append(1)
        return 10**9 // len(reads)

    monkeypatch.setattr(memory, "available_memory", shrinking)
    tr = fp32_translator()
    first = (tr.auto_batch_size(40, 48), tr.needs_tiling(40, 48))
    for _ in range(5):
        tr.translate(photos(1)[0])
        assert (tr.auto_batch_size(40, 48), tr.needs_tiling(40, 48)) == first
    assert len(reads) == 1
    tr.needs_tiling(64, 64)
    assert len(reads) == 2  # a new size is a new decision


def test_cuda_free_memory_counts_what_the_caching_allocator_holds_unused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1_000, 80_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 600)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 200)
    assert device_free_bytes(torch.device("cuda")) == 1_400


def test_a_large_batch_size_reaches_the_model_whole(tmp_path):
    """The read-ahead used to flush groups at 12 images, whatever --batch-size said."""
    src = tmp_path / "in"
    src.mkdir()
    for i, a in enumerate(photos(40, size=(24, 20))):
        Image.fromarray(a).save(src / f"{i:02d}.png")
    tr = fp32_translator(batch_size=32)
    s = translate_paths([str(src)], tmp_path / "out", tr)
    assert (s.translated, s.failed) == (40, 0)
    assert tr.stats.batch_sizes == {32: 1, 8: 1}


# ---------------------------------------------------------------- out of memory


def oom_above(monkeypatch, tr: Translator, limit: int) -> list:
    """The forward pass raises CUDA's out-of-memory error for batches over `limit`. Each failing call
    leaves a tensor in its frame, as a real failed pass leaves activations; `alive` tracks them."""
    calls, alive, real = [], [], tr._forward

    def forward(x):
        assert all(r() is None for r in alive), "a retry ran while the failed pass's tensors were alive"
        calls.append(x.shape[0])
        if x.shape[0] > limit:
            activations = torch.empty(x.shape[0], 1024)
            alive.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(x)

    monkeypatch.setattr(tr, "_forward", forward)
    return calls


def test_out_of_memory_halves_the_batch_remembers_it_and_retries_outside_the_handler(monkeypatch):
    gc.disable()  # only reference counting may free the failed pass's tensors, as on the GPU path
    try:
        tr = fp32_translator(batch_size=8)
        calls = oom_above(monkeypatch, tr, 2)
        images = photos(8)
        out = tr.translate_batch(images)
        assert calls == [8, 4, 2, 2, 2, 2]
        assert tr.auto_batch_size(40, 48) == 2 and tr.stats.out_of_memory == 2
        calls.clear()
        again = tr.translate_batch(images)
        assert calls == [2, 2, 2, 2]  # learnt: no failed pass the second time
    finally:
        gc.enable()
    single = fp32_translator()
    for a, b, c in zip(images, out, again):
        ref = single.translate(a).astype(int)
        assert np.abs(b.astype(int) - ref).max() <= 1 and np.array_equal(b, c)


def test_an_image_that_runs_out_of_memory_alone_is_tiled(monkeypatch):
    tr = fp32_translator()
    oom_above(monkeypatch, tr, 0)  # no full-frame pass fits; the tiler runs the layers itself
    notes = []
    tr.notify = notes.append
    img = photos(1, size=(96, 80))[0]
    out = tr.translate(img)
    assert tr.needs_tiling(80, 96) and tr.stats.tiled_images == 1 and len(notes) == 1
    ref = fp32_translator().translate(img).astype(int)
    assert np.abs(out.astype(int) - ref).max() <= 1  # whole-image statistics: no seams


def test_a_folder_survives_out_of_memory_with_every_image(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i, a in enumerate(photos(6)):
        Image.fromarray(a).save(src / f"{i}.png")
    tr = fp32_translator(batch_size=6)
    oom_above(monkeypatch, tr, 1)
    s = translate_paths([str(src)], tmp_path / "out", tr)
    assert (s.translated, s.failed) == (6, 0)
    assert tr.stats.batch_sizes == {1: 6}


# ---------------------------------------------------------------- non-finite output


def test_nan_weights_fail_each_file_with_a_clear_line_and_write_nothing(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, a in enumerate(photos(2)):
        Image.fromarray(a).save(src / f"{i}.png")
    net = tiny_generator()
    with torch.no_grad():
        net.model[1].weight[0, 0, 0, 0] = float("nan")
    s = translate_paths([str(src)], tmp_path / "out", Translator(net, device="cpu", precision="fp32"))
    assert (s.translated, s.failed) == (0, 2)
    assert all("NaN" in reason for _, reason in s.failures)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_cli_run_refuses_a_nan_checkpoint_before_translating(tmp_path):
    net = tiny_generator()
    with torch.no_grad():
        net.model[-2].bias.fill_(float("nan"))
    save_generator(net, tmp_path / "bad.safetensors")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photos(1)[0]).save(src / "a.png")
    r = run_cli("run", src, "-o", tmp_path / "out", "-m", tmp_path / "bad.safetensors", "--device", "cpu")
    assert r.returncode == 1
    assert "bad.safetensors" in r.stderr and "NaN or infinite" in r.stderr
    assert not (tmp_path / "out" / "a.png").exists()


def test_reduced_precision_overflow_is_rerun_in_fp32_and_said_once():
    net = tiny_generator()
    with torch.no_grad():  # the first conv's outputs pass fp16's 65504; InstanceNorm makes fp32 fine
        net.model[1].weight.mul_(1e6)
    notes = []
    tr = Translator(net, device="cpu", precision="fp16", notify=notes.append)
    x = tr.to_tensor(photos(1))
    assert not torch.isfinite(tr.forward(x)).all()  # the premise: fp16 does overflow here
    images = photos(3)
    out = tr.translate_batch(images) + tr.translate_batch(images[:1])
    ref = Translator(net, device="cpu", precision="fp32")
    for a, b in zip(images + images[:1], out):
        assert np.abs(b.astype(int) - ref.translate(a).astype(int)).max() <= 1
    assert tr.stats.wider_precision_reruns == 4 and len(notes) == 1  # one pass an image on CPU and "fp32" in notes[0]


def test_fp32_on_cuda_turns_tf32_off_and_tf32_turns_it_on():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for precision, inside in (("fp32", False), ("tf32", True)):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not inside
            tr = Translator(tiny_generator(), device="cpu", precision=precision)
            tr.device = torch.device("cuda")  # only the flags are exercised, no kernel runs
            with tr.autocast():
                assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (inside, inside)
            assert torch.backends.cudnn.allow_tf32 is (not inside)  # put back afterwards
            assert tr.precision == precision
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# ---------------------------------------------------------------- transfers, layout, autotuning


def test_sixteen_bit_pixels_travel_as_two_bytes_and_round_trip_exactly(monkeypatch):
    values = np.array([0, 1, 255, 32767, 32768, 40000, 65534, 65535], dtype=np.uint16)
    img = np.repeat(values, 3).reshape(1, 8, 3).repeat(4, axis=0)
    tr = fp32_translator()
    sent = []
    real = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: (sent.append(a.dtype.itemsize), real(a))[1])
    x = tr.to_tensor([img])
    assert sent == [2]
    torch.testing.assert_close(x[0, 0, 0], torch.tensor(values / 65535.0 * 2 - 1, dtype=torch.float32))
    q, finite = tr.quantize(x, np.uint16)
    back = tr.host_pixels(q, np.uint16)[0]
    assert back.dtype == np.uint16 and np.array_equal(back, img) and bool(finite.all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_flags_each_image_with_a_nan_or_an_infinity(dtype):
    y = torch.linspace(-1, 1, 4 * 3 * 6 * 5).reshape(4, 3, 6, 5).to(dtype)
    y[1, 2, 3, 4] = float("nan")
    y[2, 0, 0, 0] = float("inf")
    y[3, 1, 5, 0], y[3, 1, 5, 1] = float("inf"), float("-inf")  # they would cancel in a careless sum
    y = y.contiguous(memory_format=torch.channels_last)
    q, finite = quantize(y)
    assert finite.tolist() == [True, False, False, False]
    assert q.dtype == torch.uint8 and q.shape == (4, 6, 5, 3)
    want = np.clip(np.round((y[0].float().permute(1, 2, 0).numpy() + 1) * 127.5), 0, 255)  # [-1, 1] -> [0, 255]
    assert np.array_equal(q[0].numpy(), want.astype(np.uint8)) and int(q[0].min()) == 0
    assert bool(torch.isfinite(y[0]).all())  # the input is left as it was


def test_layout_is_nchw_on_cuda_unless_compiled():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not use_channels_last(cuda, compiled=False)
    assert use_channels_last(cuda, compiled=True)
    assert use_channels_last(cpu, compiled=False)


def test_cudnn_autotunes_only_shapes_that_repeat():
    tr = fp32_translator()
    a, b = (4, 3, 256, 256), (1, 3, 1080, 1920)
    assert [tr.autotune(a), tr.autotune(a), tr.autotune(b), tr.autotune(a), tr.autotune(b)] == \
        [False, True, False, True, True]


def test_tile_statistics_merge_without_a_host_sync_per_tile(monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(1, 16, 40, 52) * 3 + 1
    parts = [x[..., :13, :], x[..., 13:31, :], x[..., 31:, :30], x[..., 31:, 30:]]
    acc = RunningStats()
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: pytest.fail("host sync in the merge"))
    for p in parts:
        acc.add(p)
    mean, var = acc.result(torch.device("cpu"))
    monkeypatch.undo()
    ref_var, ref_mean = torch.var_mean(x.double(), dim=(2, 3), keepdim=True, unbiased=False)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- torchrun


@pytest.mark.parametrize("asked, expected", [("cuda", "cuda:1"), ("auto", "cuda:1"), ("cuda:0", "cuda:0"),
                                             ("cpu", "cpu")])
def test_torchrun_puts_each_rank_on_its_own_gpu(monkeypatch, asked, expected):
    import torch.distributed as dist

    from cyclebatch.run.distributed import setup

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    assert setup(asked) == ((3, 4), expected)


def test_instance_statistics_stay_right_inside_a_compiled_graph():
    """--compile on CPU keeps channels_last; a compiled graph dropped the in-place statistics writes."""
    from cyclebatch.models.networks import instance_stats

    torch.manual_seed(1)
    x = (torch.randn(1, 16, 40, 52) * 3 + 1).contiguous(memory_format=torch.channels_last)
    ref_var, ref_mean = torch.var_mean(x, dim=(2, 3), keepdim=True, unbiased=False)
    with torch.inference_mode():
        mean, var = torch.compile(instance_stats, backend="aot_eager")(x)
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(var, ref_var, rtol=1e-5, atol=1e-5)


def test_with_a_listener_each_pass_is_settled_before_the_next_begins(monkeypatch):
    """Video's shared statistics restore the state saved at `begin` for an fp32 re-run: the re-run of a
    pass must come before the next pass's `begin`, or it would start from the wrong state."""
    net = tiny_generator()
    with torch.no_grad():
        net.model[1].weight.mul_(1e6)  # fp16 overflows on every image (see the test above)
    tr = Translator(net, device="cpu", precision="fp16", batch_size=2, notify=lambda m: None)
    events = []

    class Listener:
        def begin(self, images):
            events.append(("begin", len(images)))

        def abort(self):
            events.append(("abort",))

    real = tr._rerun_fp32
    monkeypatch.setattr(tr, "_rerun_fp32", lambda chunk: (events.append(("rerun", len(chunk))), real(chunk))[1])
    out = tr.translate_batch(photos(4), listener=Listener())
    assert len(out) == 4
    assert events == [("begin", 2), ("rerun", 2), ("begin", 2), ("rerun", 2)]
