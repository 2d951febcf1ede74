"""Substitutes trained on more than one built-in dataset: the zoo entries ``mixture-resnet`` (images) and
``mixture-video-r3d`` (video), the pre-trained substitutes of ABNN.

ABNN's substitute is pre-trained on other or larger data than the target (Lo & Patel 2024 use a
Kinetics/ImageNet-scale substitute). The built-in stand-in is a network trained on a mixture of the
built-in datasets under the union of their labels, drawn with another seed than the datasets' own
default (seed 1): the substitute never saw the target's training samples.

- ``mixture-resnet``: ``SmallResNet`` (width 16) on ``shapes`` + ``signs`` + ``faces`` (32x32), 30 classes.
- ``mixture-video-r3d``: ``SmallResNet3d`` (width 8, a 3-D ResNet with the ResNet-18 stage layout) on
  ``shapes-video`` clips + still clips of ``faces`` (one face repeated over the frames), 18 classes.

``columns(entry, dataset)`` gives the logit columns of a dataset's classes inside the union (a transfer
attack from the substitute judges with those).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.synthetic import SyntheticDataset
from ..models.normalized import Normalized
from ..models.resnet import SmallResNet, SmallResNet3d
from ..training.seeding import fixed_seed
from .faces import IDENTITIES, faces
from .shapes import CLASSES as SHAPES
from .shapes import shapes
from .shapes_video import CLASSES as VIDEO_CLASSES
from .shapes_video import shapes_video
from .signs import CLASSES as SIGNS
from .signs import signs
from .zoo import SMALL_MEAN, SMALL_STD, ZooEntry, register_zoo, train_standard

SEED = 1  # the datasets' default is 0: the substitute's samples are not the target's

# (dataset, loader(split, n), train samples, test samples)
Part = tuple[str, Callable[[str, int], SyntheticDataset], int, int]

IMAGE_PARTS: tuple[Part, ...] = (
    ("shapes", lambda split, n: shapes(split, n=n, seed=SEED), 2400, 300),
    ("signs", lambda split, n: signs(split, n=n, seed=SEED), 800, 200),
    ("faces", lambda split, n: faces(split, n=n, seed=SEED), 1200, 200),
)


def _still(split: str, n: int) -> SyntheticDataset:
    """Faces as clips of 8 identical frames (no motion): the image half of the video mixture."""
    d = faces(split, n=n, seed=SEED)
    return SyntheticDataset(
        "faces-still", d.x[:, :, None].expand(-1, -1, 8, -1, -1).contiguous(), d.y, d.classes
    )


VIDEO_PARTS: tuple[Part, ...] = (
    ("shapes-video", lambda split, n: shapes_video(split, n=n, seed=SEED), 1200, 320),
    ("faces-still", _still, 400, 200),
)
PARTS = {"mixture-resnet": IMAGE_PARTS, "mixture-video-r3d": VIDEO_PARTS}


def mixture(parts: tuple[Part, ...], split: str) -> SyntheticDataset:
    """The union of the parts' ``split``: labels of part k shifted past the classes of parts 0..k-1."""
    xs, ys, classes = [], [], []
    for name, load, n_train, n_test in parts:
        d = load(split, n_train if split == "train" else n_test)
        xs.append(d.x)
        ys.append(d.y + len(classes))
        classes += [f"{name}/{c}" for c in d.classes]
    return SyntheticDataset("mixture", torch.cat(xs), torch.cat(ys), classes, split=split, seed=SEED)


CLASSES = {
    "shapes": SHAPES,
    "signs": SIGNS,
    "faces": IDENTITIES,
    "shapes-video": VIDEO_CLASSES,
    "faces-still": IDENTITIES,
}


def mixture_classes(entry: str) -> list[str]:
    """The union's class names, ``dataset/class``, without rendering any sample."""
    return [f"{name}/{c}" for name, *_ in PARTS[entry] for c in CLASSES[name]]


def num_classes(entry: str) -> int:
    return len(mixture_classes(entry))


def columns(entry: str, dataset: str) -> list[int] | None:
    """The logit columns of ``dataset``'s classes in zoo entry ``entry``'s union (None if not a part)."""
    start = 0
    for name, *_ in PARTS.get(entry, ()):
        if name == dataset:
            return list(range(start, start + len(CLASSES[name])))
        start += len(CLASSES[name])
    return None


def _entry(name: str, build: Callable[[], nn.Module], epochs: int, batch: int, lr: float, about: str) -> None:
    parts = PARTS[name]

    def train(model: nn.Module, device: torch.device, progress: bool) -> dict:
        return train_standard(
            model, mixture(parts, "train"), mixture(parts, "test"), device, epochs=epochs, batch_size=batch,
            lr=lr, desc=f"training {name}", progress=progress,
        )  # fmt: skip

    register_zoo(
        ZooEntry(
            name=name,
            dataset="mixture",
            build=build,
            train=train,
            description=about,
            extra={"parts": [p[0] for p in parts], "seed": SEED},
            input_shape=(3, 8, 32, 32) if parts is VIDEO_PARTS else (3, 32, 32),
        )  # fmt: skip
    )


def _image() -> nn.Module:
    with fixed_seed(2):
        return Normalized(
            SmallResNet(num_classes=num_classes("mixture-resnet"), width=16), SMALL_MEAN, SMALL_STD
        )


def _video() -> nn.Module:
    with fixed_seed(3):
        net = SmallResNet3d(num_classes("mixture-video-r3d"), width=8)
        return Normalized(net, SMALL_MEAN, SMALL_STD)


_entry("mixture-resnet", _image, epochs=4, batch=128, lr=0.1,
       about="Compact ResNet (16-32-64-128) on a 30-class mixture of shapes, signs and faces (seed 1): "
             "ABNN's built-in image substitute.")  # fmt: skip
_entry("mixture-video-r3d", _video, epochs=4, batch=64, lr=0.05,
       about="3-D ResNet (8-16-32-64, ResNet-18 stage layout) on shapes-video clips plus still face clips "
             "(18 classes, seed 1): ABNN's built-in video substitute.")  # fmt: skip
