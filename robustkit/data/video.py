"""Real video datasets on disk: PyAV decoding, clip sampling, UCF-101 and HMDB-51 with their official splits.

Decoding uses PyAV (the backend of pytorchvideo's ``EncodedVideoPyAV``; torchvision's video reader is
gone from recent releases) frame by frame, converting only the frames a clip needs. A sample is
``clips`` clips of ``frames`` frames, every ``stride``-th frame of the video, concatenated along time:
``(3, clips * frames, size, size)`` in [0, 1] (frames resized on the short side to ``size`` and
centre-cropped). ``sampling='uniform'`` spreads the clip starts evenly over the video (one clip: the
centre), ``'random'`` draws them from a generator seeded by (``seed``, index), so a sample is the same
in every run. Evaluate multi-clip samples with ``robustkit.models.video.MultiClip(model, clips)``,
which averages logits over exactly these clips; an attack on that model goes through the same path.

Layouts (what the official archives unpack to):

- UCF-101: ``root/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` and ``root/ucfTrainTestlist/`` holding
  ``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlist0N.txt`` (``Class/v_....avi 1``) and
  ``testlist0N.txt`` (``Class/v_....avi``).
- HMDB-51: ``root/<class>/<video>.avi`` (or ``root/hmdb51_org/`` / ``root/videos/``) and
  ``root/testTrainMulti_7030_splits/<class>_test_splitN.txt`` with lines ``<video>.avi F``, where
  F = 1 train, 2 test, 0 unused. Classes are the split-file class names, sorted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import av
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, InputError
from .loading import register_format
from .synthetic import sample_rng

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v"}
SAMPLINGS = ("uniform", "random")


def count_frames(path: str | Path) -> int:
    """Number of video frames, from the container header or, when it has none, by demuxing packets."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size)
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise InputError(f"cannot read video {path}: {exc}") from exc


def read_frames(path: str | Path, indices: Sequence[int]) -> torch.Tensor:
    """Frames ``indices`` (any order, repeats allowed) as uint8 ``(len(indices), H, W, 3)`` RGB.

    Decodes sequentially up to the last index needed. When the video holds fewer frames than its
    header said, the missing indices get the last decoded frame.
    """
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        raise InputError("no frame indices to read")
    keep = set(wanted)
    got: dict[int, torch.Tensor] = {}
    fallback: torch.Tensor | None = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frame = None
            for i, frame in enumerate(container.decode(stream)):
                if i in keep:
                    got[i] = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                if i >= wanted[-1]:
                    break
            if frame is None:
                raise InputError(f"video {path} has no decodable frame")
            if len(got) < len(keep):  # the header promised more frames than the stream holds
                fallback = got[max(got)] if got else torch.from_numpy(frame.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise InputError(f"cannot decode video {path}: {exc}") from exc
    return torch.stack([got.get(i, fallback) for i in map(int, indices)])


def clip_starts(
    total: int, span: int, clips: int, sampling: str, generator: torch.Generator | None
) -> list[int]:
    """First frame of each of ``clips`` clips spanning ``span`` frames of a ``total``-frame video."""
    room = max(total - span, 0)
    if sampling == "random":
        if generator is None:
            raise ConfigError("random clip sampling needs a generator")
        return [int(torch.randint(0, room + 1, (), generator=generator)) for _ in range(clips)]
    if clips == 1:
        return [room // 2]
    return [round(i * room / (clips - 1)) for i in range(clips)]


def clip_indices(
    total: int,
    frames: int,
    stride: int,
    clips: int = 1,
    sampling: str = "uniform",
    generator: torch.Generator | None = None,
) -> list[int]:
    """Frame indices of ``clips`` clips of ``frames`` frames, one every ``stride`` frames, concatenated.

    A video shorter than one clip span is sampled evenly over its whole length instead (frames repeat
    when it has fewer than ``frames`` frames).
    """
    if total < 1:
        raise InputError("the video has no frames")
    span = (frames - 1) * stride + 1
    if total < span:
        one = torch.linspace(0, total - 1, frames).round().long().tolist()
        return one * clips
    out: list[int] = []
    for start in clip_starts(total, span, clips, sampling, generator):
        out.extend(range(start, start + span, stride))
    return out


def resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> float ``(3, T, size, size)`` in [0, 1]: short side to ``size``, centre crop."""
    x = frames.permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x.clamp(0, 1).permute(1, 0, 2, 3).contiguous()


class VideoClipDataset(Dataset):
    """Videos on disk as clips ``(3, clips * frames, size, size)`` in [0, 1] with int labels and ``classes``.

    ``on_corrupt='skip'`` drops videos PyAV cannot open (listed in ``skipped``) the first time the
    dataset is sized or indexed; ``'error'`` refuses them.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        *,
        frames: int = 16,
        size: int = 112,
        clips: int = 1,
        stride: int = 2,
        sampling: str = "uniform",
        seed: int = 0,
        split: str = "test",
        name: str = "video",
        on_corrupt: str = "skip",
    ) -> None:
        for what, value in (("frames", frames), ("size", size), ("clips", clips), ("stride", stride)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: preprocessing.{what} must be an integer >= 1, got {value!r}")
        if sampling not in SAMPLINGS:
            raise ConfigError(
                f"{name}: preprocessing.sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}"
            )
        if on_corrupt not in ("skip", "error"):
            raise ConfigError(f"{name}: on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        self.samples = [(Path(p), int(c)) for p, c in samples]
        self.classes = list(classes)
        self.frames, self.size, self.clips, self.stride = frames, size, clips, stride
        self.sampling, self.seed, self.split, self.name, self.on_corrupt = (
            sampling,
            seed,
            split,
            name,
            on_corrupt,
        )
        self.skipped: list[str] = []
        self._lengths: list[int] | None = None

    def verify(self) -> None:
        """Count every video's frames once (cheap: headers or packets, no decoding)."""
        if self._lengths is not None:
            return
        good, lengths = [], []
        for path, label in self.samples:
            try:
                n = count_frames(path)
                if n < 1:
                    raise InputError(f"video {path} has no frames")
            except InputError:
                if self.on_corrupt != "skip":
                    raise
                self.skipped.append(str(path))
                log.warning("skipping unreadable video %s", path)
                continue
            good.append((path, label))
            lengths.append(n)
        self.samples, self._lengths = good, lengths

    def __len__(self) -> int:
        self.verify()
        return len(self.samples)

    def indices(self, i: int) -> list[int]:
        """The frame indices sample ``i`` reads (deterministic given ``seed``)."""
        self.verify()
        assert self._lengths is not None
        g = sample_rng(self.seed, self.split, i) if self.sampling == "random" else None
        return clip_indices(self._lengths[i], self.frames, self.stride, self.clips, self.sampling, g)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.verify()
        path, label = self.samples[i]
        return resize_crop(read_frames(path, self.indices(i)), self.size), label


def _videos_dir(root: Path, candidates: Sequence[str]) -> Path:
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    return root


def _resolver(videos: Path):
    """Find ``relative`` under ``videos``, case-insensitively when the exact path is missing
    (UCF-101's split lists spell ``HandStandPushups`` where the folder says ``HandstandPushups``)."""
    index: dict[str, Path] | None = None

    def resolve(relative: str) -> Path | None:
        nonlocal index
        path = videos / relative
        if path.is_file():
            return path
        if index is None:
            index = {
                str(p.relative_to(videos)).lower(): p
                for p in videos.rglob("*")
                if p.suffix.lower() in VIDEO_SUFFIXES
            }
        return index.get(relative.lower())

    return resolve


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"split file {path} is missing")
    return [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]


def _check_split(split: str, name: str) -> None:
    if split not in ("train", "test"):
        raise InputError(f"{name} has splits 'train' and 'test', not '{split}'")


def _check_fold(fold: int, name: str) -> None:
    if fold not in (1, 2, 3):
        raise ConfigError(f"{name}: splits.fold must be 1, 2 or 3 (the official splits), got {fold!r}")


def _finish(
    samples: list[tuple[Path, int]], missing: list[str], name: str, where: Path
) -> list[tuple[Path, int]]:
    if missing:
        log.warning(
            "%s: %d videos listed in the split are missing under %s (first: %s)",
            name,
            len(missing),
            where,
            missing[0],
        )
    if not samples:
        raise InputError(f"{name}: none of the videos of this split was found under {where}")
    return samples


def ucf101(root: str | Path, split: str = "test", *, fold: int = 1, **options) -> VideoClipDataset:
    """UCF-101 from its official archives; ``options`` are :class:`VideoClipDataset` keywords."""
    _check_split(split, "UCF-101")
    _check_fold(fold, "UCF-101")
    root = Path(root).expanduser()
    videos = _videos_dir(root, ("UCF-101", "UCF101", "videos"))
    lists = _videos_dir(root, ("ucfTrainTestlist", "splits"))
    classes: list[str] = []
    for line in _read_lines(lists / "classInd.txt"):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise InputError(f"{lists / 'classInd.txt'}: expected lines '<index> <ClassName>', got {line!r}")
        if int(parts[0]) != len(classes) + 1:
            raise InputError(f"{lists / 'classInd.txt'}: class indices must run 1, 2, 3, ...; got {parts[0]}")
        classes.append(parts[1])
    label_of = {c.lower(): i for i, c in enumerate(classes)}
    resolve = _resolver(videos)
    samples, missing = [], []
    for line in _read_lines(lists / f"{split}list0{fold}.txt"):
        relative = line.split()[0]
        folder = relative.replace("\\", "/").split("/")[0].lower()
        if folder not in label_of:
            raise InputError(
                f"{split}list0{fold}.txt names class folder '{folder}' that classInd.txt does not list"
            )
        path = resolve(relative)
        if path is None:
            missing.append(relative)
            continue
        samples.append((path, label_of[folder]))
    samples = _finish(samples, missing, "UCF-101", videos)
    return VideoClipDataset(samples, classes, split=split, name="ucf101", **options)


HMDB_FLAGS = {"train": "1", "test": "2"}


def hmdb51(root: str | Path, split: str = "test", *, fold: int = 1, **options) -> VideoClipDataset:
    """HMDB-51 from its official archives; ``options`` are :class:`VideoClipDataset` keywords."""
    _check_split(split, "HMDB-51")
    _check_fold(fold, "HMDB-51")
    root = Path(root).expanduser()
    videos = _videos_dir(root, ("hmdb51_org", "videos"))
    lists = _videos_dir(root, ("testTrainMulti_7030_splits", "splits"))
    suffix = f"_test_split{fold}.txt"
    files = sorted(p for p in lists.iterdir() if p.name.endswith(suffix)) if lists.is_dir() else []
    if not files:
        raise InputError(f"HMDB-51: no '<class>{suffix}' split files in {lists}")
    classes = [p.name[: -len(suffix)] for p in files]
    resolve = _resolver(videos)
    samples, missing = [], []
    for label, (cls, file) in enumerate(zip(classes, files, strict=True)):
        for line in _read_lines(file):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise InputError(f"{file}: expected lines '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] != HMDB_FLAGS[split]:
                continue
            path = resolve(f"{cls}/{parts[0]}")
            if path is None:
                missing.append(f"{cls}/{parts[0]}")
                continue
            samples.append((path, label))
    samples = _finish(samples, missing, "HMDB-51", videos)
    return VideoClipDataset(samples, classes, split=split, name="hmdb51", **options)


PREPROCESSING_KEYS = ("frames", "size", "clips", "stride", "sampling", "on_corrupt")


def _from_manifest(loader, manifest: dict, split: str, root: Path) -> VideoClipDataset:
    pre = dict(manifest.get("preprocessing") or {})
    unknown = sorted(set(pre) - set(PREPROCESSING_KEYS))
    if unknown:
        raise ConfigError(
            f"{manifest.get('name')}: unknown preprocessing keys {unknown}; allowed: {', '.join(PREPROCESSING_KEYS)}"
        )
    fold = int((manifest.get("splits") or {}).get("fold", 1))
    ds = loader(root, split, fold=fold, **pre)
    if manifest.get("classes"):
        if len(manifest["classes"]) != len(ds.classes):
            raise InputError(
                f"{manifest.get('name')}: the manifest lists {len(manifest['classes'])} classes, the split files {len(ds.classes)}"
            )
        ds.classes = list(manifest["classes"])
    return ds


@register_format("ucf101")
def ucf101_format(manifest: dict, split: str, root: Path) -> Dataset:
    """Manifest entry point (``format: ucf101``); ``splits.fold`` picks the official split 1-3."""
    return _from_manifest(ucf101, manifest, split, root)


@register_format("hmdb51")
def hmdb51_format(manifest: dict, split: str, root: Path) -> Dataset:
    """Manifest entry point (``format: hmdb51``); ``splits.fold`` picks the official split 1-3."""
    return _from_manifest(hmdb51, manifest, split, root)
