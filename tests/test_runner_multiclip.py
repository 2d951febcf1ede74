"""The runner evaluates multi-clip video samples through the average over clips."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from robustkit.api import evaluate


class TwoClips(Dataset):
    """Samples (3, 2 * 4, 8, 8): two clips of four frames, as robustkit.data.video lays them out."""

    clips, frames, classes = 2, 4, ["a", "b"]

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(6, 3, 8, 8, 8, generator=g)
        self.y = torch.tensor([0, 1, 0, 1, 0, 1])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


class FourFrames(nn.Module):
    """Refuses anything but 4-frame clips, so the test fails if the runner feeds whole samples."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] == 4, x.shape
        self.seen.append(x.shape[0])
        return self.fc(x.mean((2, 3, 4)))


def test_multi_clip_samples_are_averaged_over_clips(tmp_path):
    model = FourFrames()
    suite = {"name": "one", "attacks": [{"attack": "video-pgd", "eps": "2/255", "steps": 2}]}
    res = evaluate(model=model, data=TwoClips(), suite=suite, out=tmp_path, name="mc", device="cpu",
                   progress=False, report=False)  # fmt: skip
    assert res.summary["n_samples"] == 6
    assert model.seen and all(b % 2 == 0 for b in model.seen)  # every call holds both clips of each sample
    with torch.no_grad():
        data = TwoClips()
        expected = (model(data.x[:, :, :4]) + model(data.x[:, :, 4:])) / 2
    clean = (expected.argmax(1) == data.y).float().mean().item()
    assert abs(res.summary["clean_accuracy"] - clean) < 1e-9
