"""Video data: the built-in ``shapes-video`` clips, clip sampling, and UCF-101 / HMDB-51 read from tiny
videos the tests write (PyAV and OpenCV) in the official folder layouts with their split files."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from robustkit.builtin.shapes_video import CLASSES, render_clip, shapes_video
from robustkit.data.loading import load_dataset
from robustkit.data.synthetic import BUILTIN
from robustkit.data.video import VideoClipDataset, clip_indices, hmdb51, read_frames, resize_crop, ucf101
from robustkit.errors import ConfigError, InputError
from robustkit.models.video import MultiClip

STEP = 12  # frame i of a test video is uniformly gray at level STEP * i (+ a per-video offset)
H, W = 24, 32


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny clips: see conftest.one_thread


def gray_frames(n: int, offset: int = 0) -> list[np.ndarray]:
    return [np.full((H, W, 3), min(255, offset + STEP * i), np.uint8) for i in range(n)]


def write_pyav(path: Path, frames: list[np.ndarray], codec: str = "mpeg4") -> Path:
    """An .avi like UCF-101's (MPEG-4 part 2 in AVI), written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"qscale": "1"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_opencv(path: Path, frames: list[np.ndarray]) -> Path:
    """An .avi written with OpenCV's VideoWriter (Motion-JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (W, H))
    assert writer.isOpened()
    for array in frames:
        writer.write(cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def frame_levels(clip: torch.Tensor, offset: int = 0) -> list[int]:
    """Which source frame each decoded frame of a ``(3, T, h, w)`` clip is, from its gray level."""
    return [round((float(v) * 255 - offset) / STEP) for v in clip.mean(dim=(0, 2, 3))]


# ----------------------------------------------------------------------------- shapes-video
def test_shapes_video_is_deterministic_balanced_and_configurable():
    a = shapes_video("test", n=16)
    assert a.x.shape == (16, 3, 8, 32, 32) and a.x.dtype == torch.float32
    assert a.x.min() >= 0 and a.x.max() <= 1
    assert a.y.tolist() == [i % 8 for i in range(16)] and a.classes == CLASSES
    b = shapes_video("test", n=8)
    assert torch.equal(a.x[:8], b.x)  # a sample depends only on (seed, split, index)
    assert not torch.equal(shapes_video("train", n=8).x, b.x)
    assert not torch.equal(shapes_video("test", n=8, seed=1).x, b.x)
    assert shapes_video("test", n=2, frames=5, size=20).x.shape == (2, 3, 5, 20, 20)
    assert "shapes-video" in BUILTIN
    assert torch.equal(BUILTIN.create("shapes-video", split="test", n=8).x, b.x)
    with pytest.raises(ValueError):
        shapes_video("test", n=2, frames=2)


@pytest.mark.parametrize("kind", range(4))
def test_paired_classes_differ_only_by_the_order_of_their_frames(kind):
    """The odd class of each pair is its partner played backwards: same frames, reversed time."""
    for seed in range(3):
        forward = render_clip(torch.Generator().manual_seed(seed), 2 * kind, 8, 32, noise=0.0)
        backward = render_clip(torch.Generator().manual_seed(seed), 2 * kind + 1, 8, 32, noise=0.0)
        torch.testing.assert_close(backward, forward.flip(1))
        assert not torch.allclose(backward, forward)  # it moves


# ----------------------------------------------------------------------------- clip sampling
def test_clip_indices_uniform_random_multi_clip_and_short_videos():
    assert clip_indices(20, 4, 2) == [6, 8, 10, 12]  # one clip, centred: span 7 in 20 frames
    assert clip_indices(20, 4, 2, clips=3) == [0, 2, 4, 6, 6, 8, 10, 12, 13, 15, 17, 19]
    assert clip_indices(3, 5, 2) == [0, 0, 1, 2, 2]  # shorter than one span: spread over the video
    assert clip_indices(3, 5, 2, clips=2) == [0, 0, 1, 2, 2] * 2
    a = clip_indices(100, 4, 1, clips=2, sampling="random", generator=torch.Generator().manual_seed(0))
    b = clip_indices(100, 4, 1, clips=2, sampling="random", generator=torch.Generator().manual_seed(0))
    c = clip_indices(100, 4, 1, clips=2, sampling="random", generator=torch.Generator().manual_seed(1))
    assert a == b and a != c
    assert all(a[i + 1] - a[i] == 1 for i in (0, 1, 2, 4, 5, 6))
    with pytest.raises(ConfigError):
        clip_indices(100, 4, 1, sampling="random")
    with pytest.raises(InputError):
        clip_indices(0, 4, 1)


# ----------------------------------------------------------------------------- UCF-101
UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    """UCF-101 as its archives unpack: UCF-101/<Class>/v_<Class>_gXX_cYY.avi and ucfTrainTestlist/."""
    root = tmp_path_factory.mktemp("ucf")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES)))
    train, test = [], []
    for label, cls in enumerate(UCF_CLASSES):
        for group in (1, 8):
            name = f"{cls}/v_{cls}_g{group:02d}_c01.avi"
            write_pyav(root / "UCF-101" / name, gray_frames(20, offset=label))
            # the official lists spell HandStandPushups where the folder says HandstandPushups
            listed = name.replace("Handstand", "HandStand")
            (train if group == 8 else test).append(listed)
    (lists / "trainlist01.txt").write_text(
        "".join(
            f"{n} {UCF_CLASSES.index(n.split('/')[0].replace('HandStand', 'Handstand')) + 1}\n" for n in train
        )
    )
    (lists / "testlist01.txt").write_text("".join(f"{n}\r\n" for n in test + ["YoYo/v_YoYo_g02_c01.avi"]))
    return root


def test_ucf101_reads_the_official_layout_and_split_lists(ucf_root, caplog):
    with caplog.at_level(logging.WARNING):
        test = ucf101(ucf_root, "test", frames=4, size=16, stride=2)
    assert "1 videos listed in the split are missing" in caplog.text  # YoYo g02 is listed, not on disk
    train = ucf101(ucf_root, "train", frames=4, size=16, stride=2)
    assert test.classes == UCF_CLASSES
    assert len(test) == 3 and len(train) == 3
    assert sorted(label for _, label in test.samples) == [0, 1, 2]
    assert all("_g01_" in p.name for p, _ in test.samples) and all(
        "_g08_" in p.name for p, _ in train.samples
    )
    for i in range(len(test)):
        x, label = test[i]
        assert x.shape == (3, 4, 16, 16) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert frame_levels(x, offset=label) == [6, 8, 10, 12]  # the centred clip, every 2nd frame


def test_ucf101_through_the_manifest_with_multi_clip_evaluation(ucf_root):
    ds = load_dataset("ucf101", "test", root=ucf_root)
    assert isinstance(ds, VideoClipDataset)
    assert (ds.frames, ds.size, ds.clips, ds.stride, ds.sampling) == (
        16,
        112,
        1,
        2,
        "uniform",
    )  # the manifest

    three = VideoClipDataset(ds.samples, ds.classes, frames=4, size=16, clips=3, stride=2)
    x, label = three[0]
    assert x.shape == (3, 12, 16, 16)
    assert frame_levels(x, offset=label) == [0, 2, 4, 6, 6, 8, 10, 12, 13, 15, 17, 19]

    # MultiClip averages the logits of exactly these clips
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    model = MultiClip(net, clips=3, clip_len=4)
    batch = torch.stack([three[i][0] for i in range(len(three))])
    per_clip = [
        net(torch.stack([resize_crop(read_frames(p, idx), 16) for p, _ in three.samples]))
        for idx in ([0, 2, 4, 6], [6, 8, 10, 12], [13, 15, 17, 19])
    ]
    torch.testing.assert_close(model(batch), torch.stack(per_clip, 1).mean(1))


def test_random_clip_sampling_is_fixed_by_the_seed(ucf_root):
    kw = dict(frames=3, size=16, stride=1, sampling="random")
    a, b = ucf101(ucf_root, "test", seed=0, **kw), ucf101(ucf_root, "test", seed=0, **kw)
    assert [a.indices(i) for i in range(3)] == [b.indices(i) for i in range(3)]
    assert torch.equal(a[1][0], b[1][0])
    others = [ucf101(ucf_root, "test", seed=s, **kw).indices(0) for s in range(1, 6)]
    assert any(o != a.indices(0) for o in others)
    x, label = a[2]
    start = a.indices(2)[0]
    assert frame_levels(x, offset=label) == [start, start + 1, start + 2]


def test_ucf101_refuses_bad_layouts_and_options(ucf_root, tmp_path):
    with pytest.raises(InputError, match="split"):
        ucf101(ucf_root, "val")
    with pytest.raises(ConfigError, match="fold"):
        ucf101(ucf_root, "test", fold=4)
    with pytest.raises(InputError, match="testlist02.txt"):
        ucf101(ucf_root, "test", fold=2)
    with pytest.raises(ConfigError, match="sampling"):
        ucf101(ucf_root, "test", sampling="dense")
    with pytest.raises(ConfigError, match="frames"):
        ucf101(ucf_root, "test", frames=0)
    with pytest.raises(InputError, match="does not exist"):
        load_dataset("ucf101", "test", root=tmp_path / "nowhere")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: u\nformat: ucf101\nroot: {ucf_root}\npreprocessing: {{frame: 4}}\n")
    with pytest.raises(ConfigError, match="frame"):
        load_dataset(str(manifest))


def test_unreadable_videos_are_skipped_or_refused(ucf_root, tmp_path):
    bad = tmp_path / "broken.avi"
    bad.write_bytes(b"RIFF not a video at all")
    good = next(iter(ucf101(ucf_root, "test").samples))
    ds = VideoClipDataset([good, (bad, 1)], UCF_CLASSES, frames=2, size=8)
    assert len(ds) == 1 and ds.skipped == [str(bad)]
    with pytest.raises(InputError, match="broken.avi"):
        len(VideoClipDataset([good, (bad, 1)], UCF_CLASSES, frames=2, size=8, on_corrupt="error"))


# ----------------------------------------------------------------------------- HMDB-51
@pytest.fixture(scope="module")
def hmdb_root(tmp_path_factory) -> Path:
    """HMDB-51: <class>/<video>.avi and testTrainMulti_7030_splits/<class>_test_splitN.txt (1 train, 2 test, 0 unused)."""
    root = tmp_path_factory.mktemp("hmdb")
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    for label, cls in enumerate(("brush_hair", "wave")):
        lines = []
        for k, flag in enumerate((1, 1, 2, 0)):
            name = f"{cls}_clip_{k}.avi"
            write_opencv(root / "hmdb51_org" / cls / name, gray_frames(10, offset=label))
            lines.append(f"{name} {flag} ")
        (splits / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
        (splits / f"{cls}_test_split2.txt").write_text("".join(f"{cls}_clip_{k}.avi 1\n" for k in range(4)))
    return root


def test_hmdb51_reads_the_official_layout_and_70_30_flags(hmdb_root):
    train = hmdb51(hmdb_root, "train", frames=4, size=16, stride=3)
    test = load_dataset("hmdb51", "test", root=hmdb_root)
    assert train.classes == ["brush_hair", "wave"] == test.classes
    assert sorted(p.name for p, _ in train.samples) == [
        "brush_hair_clip_0.avi",
        "brush_hair_clip_1.avi",
        "wave_clip_0.avi",
        "wave_clip_1.avi",
    ]
    assert sorted((p.name, c) for p, c in test.samples) == [
        ("brush_hair_clip_2.avi", 0),
        ("wave_clip_2.avi", 1),
    ]
    x, label = train[2]
    assert x.shape == (3, 4, 16, 16)
    assert frame_levels(x, offset=label) == [0, 3, 6, 9]  # span 10 = the whole video
    assert len(hmdb51(hmdb_root, "train", fold=2)) == 8
    with pytest.raises(InputError, match="split3"):
        hmdb51(hmdb_root, "test", fold=3)


def test_hmdb51_refuses_malformed_split_lines(hmdb_root, tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "run_test_split1.txt").write_text("a.avi 7\n")
    with pytest.raises(InputError, match=r"<0\|1\|2>"):
        hmdb51(tmp_path, "test")
