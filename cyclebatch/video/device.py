"""The GPU path of `video`: frames travel as yuv420p and are converted next to the model (colour.py)."""

from __future__ import annotations

import numpy as np

from .sources import Frame


class DevicePath:
    """yuv420p frames go to the device as decoded; RGB exists only there, around the model; yuv420p (RGB
    for PNG frames) comes back. On a GPU this takes FFmpeg's conversions, the slowest CPU work after the
    encoder, off the CPU threads.

    The engine takes RGB arrays, so this launches its own passes (torch_forward, quantize) through the
    engine's pass loop (`run_passes`: batch size, out-of-memory halving, the listener). Tiled frames and
    non-finite output go through `translate_batch` with RGB made here, so the tiler and the fp32 re-run are
    the engine's own.
    """

    def __init__(self, translator, source, to_yuv: bool):
        self.tr = translator
        self.src = source.yuv_colour
        colour = source.colour
        # The output's matrix and range are the input's when tagged; untagged output is BT.601, limited.
        self.dst = (colour["colorspace"], colour["color_range"] == 2) if colour else (2, False)
        self.rotation = source.rotation
        self.to_yuv = to_yuv

    def size(self, frame: Frame) -> tuple[int, int]:
        h, w = frame.size
        return (w, h) if self.rotation in (90, 270) else (h, w)

    def __call__(self, batch: list[Frame], listener) -> list[Frame]:
        h, w = self.size(batch[0])

        def launch(chunk: list[Frame]) -> list[Frame]:
            done = self._launch(chunk)
            if done is None:  # non-finite output: the engine's own fp32 re-run (or failure) on RGB frames
                if listener is not None:
                    listener.abort()
                done = self._via_engine(chunk, listener)
            return done

        parts = self.tr.run_passes(batch, h, w, launch, lambda rest: self._via_engine(rest, listener), listener,
                                   announce=lambda chunk: [f.thumb for f in chunk])
        return [f for part in parts for f in part]

    def _rgb(self, chunk: list[Frame]):
        import torch

        from .colour import yuv420_to_rgb

        raw = torch.from_numpy(np.stack([f.yuv for f in chunk]))
        if self.tr.device.type == "cuda":
            raw = raw.pin_memory()
        rgb = yuv420_to_rgb(raw.to(self.tr.device, non_blocking=True), *self.src)
        return torch.rot90(rgb, self.rotation // 90, dims=(2, 3)) if self.rotation else rgb

    def _launch(self, chunk: list[Frame]):
        import torch

        from .colour import rgb_to_yuv420

        tr = self.tr
        with torch.inference_mode():
            x = self._rgb(chunk).mul_(2.0 / 255.0).sub_(1.0)
            y = tr.torch_forward(x)
            q, finite = tr.quantize(y)
            px = rgb_to_yuv420(q.permute(0, 3, 1, 2).float(), *self.dst) if self.to_yuv else q
            px = px.cpu().numpy()
        tr.stats.batch_sizes[len(chunk)] += 1
        if not bool(finite.all()):
            return None
        if self.to_yuv:
            return [Frame(None, f.pts, yuv=p) for f, p in zip(chunk, px)]
        return [Frame(p, f.pts) for f, p in zip(chunk, px)]

    def _via_engine(self, frames: list[Frame], listener) -> list[Frame]:
        import torch

        with torch.inference_mode():  # one frame at a time: this runs after the device ran out of memory
            rgbs = [self._rgb([f])[0].to(torch.uint8).permute(1, 2, 0).cpu().numpy() for f in frames]
        outs = self.tr.translate_batch(rgbs, listener=listener)
        return [Frame(o, f.pts) for o, f in zip(outs, frames)]

