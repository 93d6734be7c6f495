"""The history of generated images the discriminators learn from (Shrivastava et al.; CycleGAN uses 50)."""

from __future__ import annotations

import torch


class ImagePool:
    """Until full, returns what it is given and keeps it; then, per image, half the time it returns
    a stored one at random and keeps the new one in its place. Randomness comes from its own
    generator so that its state can be checkpointed and a resumed run draws the same numbers."""

    def __init__(self, size: int = 50, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(1, generator=self.rng).item() < 0.5:
                k = int(torch.randint(0, self.size, (1,), generator=self.rng))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"images": [t.cpu() for t in self.images], "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.images = [t.to(device) for t in state["images"]]
        self.rng.set_state(state["rng"])
