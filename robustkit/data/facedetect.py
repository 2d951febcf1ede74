"""Eyes from real face photos with OpenCV's bundled Haar cascades, and eyeglass placement from them.

``detect_eyes`` finds the largest frontal face (``haarcascade_frontalface_default.xml``), then the two
eyes inside its upper part (``haarcascade_eye.xml``), and returns their centres. ``place_eyeglass``
maps a canonical frame (drawn for eyes at ``masks.CANONICAL_EYES``) onto detected eyes with the
similarity transform that carries one eye pair onto the other; ``align_face`` does the inverse and
produces an aligned crop whose eyes sit at the canonical position.

The cascades ship with ``opencv-python(-headless)`` 4.x in ``cv2.data.haarcascades``. OpenCV 5 moved
``CascadeClassifier`` to the contrib build and no longer bundles the XML files: there, install
``opencv-python-headless<5``, or ``opencv-contrib-python-headless`` and pass ``cascade_dir`` (or set
``ROBUSTKIT_HAAR_DIR``) to a folder holding the two XML files.

OpenCV works on numpy arrays; the conversion stays inside this module.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from ..errors import ConfigError
from ..functional.placement import similarity_from_points, warp_mask
from .masks import canonical_eyes, eyeglass_mask

log = logging.getLogger(__name__)

FACE_XML = "haarcascade_frontalface_default.xml"
EYE_XML = "haarcascade_eye.xml"
MIN_DETECT_SIDE = 160  # Haar eye windows are 20 px; smaller images are upscaled before detection


def cascade_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The folder holding the Haar XML files: ``explicit``, ``$ROBUSTKIT_HAAR_DIR`` or ``cv2.data.haarcascades``."""
    if explicit:
        return Path(explicit)
    if os.environ.get("ROBUSTKIT_HAAR_DIR"):
        return Path(os.environ["ROBUSTKIT_HAAR_DIR"])
    import cv2

    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    return Path(base) if base else None


def haar_available(explicit: str | os.PathLike | None = None) -> bool:
    """True when this OpenCV build can run the face and eye cascades."""
    import cv2

    folder = cascade_dir(explicit)
    return (
        hasattr(cv2, "CascadeClassifier")
        and folder is not None
        and (folder / FACE_XML).is_file()
        and (folder / EYE_XML).is_file()
    )


@functools.lru_cache(maxsize=4)
def _cascades(folder: str) -> tuple[object, object]:
    import cv2

    face, eye = (
        cv2.CascadeClassifier(str(Path(folder) / FACE_XML)),
        cv2.CascadeClassifier(str(Path(folder) / EYE_XML)),
    )
    if face.empty() or eye.empty():
        raise ConfigError(f"OpenCV could not load the Haar cascades in {folder}")
    return face, eye


def _require(explicit: str | os.PathLike | None) -> tuple[object, object]:
    if not haar_available(explicit):
        import cv2

        raise ConfigError(
            f"eye detection needs OpenCV's Haar cascades ({FACE_XML}, {EYE_XML}), which OpenCV {cv2.__version__} "
            "here does not provide (OpenCV 5 moved them out of opencv-python-headless). Install "
            "'opencv-python-headless<5', or opencv-contrib-python-headless and set ROBUSTKIT_HAAR_DIR (or "
            "cascade_dir) to a folder with the two XML files; or use aligned faces with eyes='canonical'."
        )
    return _cascades(str(cascade_dir(explicit)))


def _gray_uint8(image: torch.Tensor):
    """(3, H, W) or (1, H, W) in [0, 1] -> numpy uint8 (H, W) with equalized histogram."""
    import cv2

    img = image.detach().float().cpu().clamp(0, 1)
    gray = img.mean(0) if img.shape[0] != 3 else 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    arr = (gray * 255).round().to(torch.uint8).numpy()
    return cv2.equalizeHist(arr)


def _pick_pair(
    eyes: list[tuple[int, int, int, int]], width: float
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The best pair of eye boxes: similar height and size, horizontally 0.2-0.8 face widths apart."""
    best, best_score = None, float("inf")
    for i in range(len(eyes)):
        for j in range(i + 1, len(eyes)):
            (x1, y1, w1, h1), (x2, y2, w2, h2) = eyes[i], eyes[j]
            c1, c2 = (x1 + w1 / 2, y1 + h1 / 2), (x2 + w2 / 2, y2 + h2 / 2)
            dx, dy = abs(c1[0] - c2[0]), abs(c1[1] - c2[1])
            if not 0.2 * width <= dx <= 0.8 * width or dy > 0.25 * dx:
                continue
            score = dy / dx + abs(w1 - w2) / max(w1, w2)
            if score < best_score:
                best, best_score = (c1, c2) if c1[0] < c2[0] else (c2, c1), score
    return best


def detect_eyes(image: torch.Tensor, *, cascade_dir: str | os.PathLike | None = None) -> torch.Tensor | None:
    """Eye centres (2, 2) as (x, y) pixels, left eye (in the image) first, or ``None`` when not found.

    ``image`` is (C, H, W) in [0, 1]. Small images are upscaled for the 20-pixel Haar windows.
    """
    import cv2

    face_cc, eye_cc = _require(cascade_dir)
    gray = _gray_uint8(image)
    h, w = gray.shape
    k = max(1.0, MIN_DETECT_SIDE / min(h, w))
    if k > 1:
        gray = cv2.resize(gray, (round(w * k), round(h * k)), interpolation=cv2.INTER_LINEAR)
    faces = list(face_cc.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3))
    if faces:
        fx, fy, fw, fh = max(faces, key=lambda f: f[2] * f[3])
    else:
        fx, fy, fw, fh = 0, 0, gray.shape[1], gray.shape[0]
    roi = gray[fy : fy + int(fh * 0.65), fx : fx + fw]
    found = eye_cc.detectMultiScale(roi, scaleFactor=1.05, minNeighbors=3, minSize=(max(8, fw // 12),) * 2)
    pair = _pick_pair([tuple(int(t) for t in e) for e in found], float(fw))
    if pair is None:
        return None
    pts = torch.tensor(
        [[pair[0][0] + fx, pair[0][1] + fy], [pair[1][0] + fx, pair[1][1] + fy]], dtype=torch.float32
    )
    return (pts + 0.5) / k - 0.5  # back to the original pixel grid


def detect_eyes_batch(
    x: torch.Tensor, *, cascade_dir: str | os.PathLike | None = None, fallback: str = "canonical"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eyes (B, 2, 2) for a batch of square images and a (B,) bool mask of where detection worked.

    Where no pair is found the canonical position is used (``fallback='canonical'``) or a ConfigError
    is raised (``fallback='error'``).
    """
    b, _, h, w = x.shape
    canon = canonical_eyes(h) if h == w else canonical_eyes(min(h, w))
    eyes, ok = [], []
    for i in range(b):
        found = detect_eyes(x[i], cascade_dir=cascade_dir)
        if found is None and fallback == "error":
            raise ConfigError(f"no pair of eyes found in image {i} of the batch")
        ok.append(found is not None)
        eyes.append(found if found is not None else canon)
    if not all(ok):
        log.info("eyes not found in %d of %d images; using the canonical position", ok.count(False), b)
    return torch.stack(eyes).to(x.device), torch.tensor(ok, device=x.device)


def place_eyeglass(
    eyes: torch.Tensor, size: tuple[int, int], frame: torch.Tensor | None = None
) -> torch.Tensor:
    """Eyeglass masks (B, 1, H, W) for eyes (B, 2, 2): the canonical frame moved onto each eye pair."""
    h, w = size
    side = min(h, w)
    frame = eyeglass_mask(side) if frame is None else frame
    src = canonical_eyes(frame.shape[-1]).to(eyes)[None].expand_as(eyes)
    return warp_mask(frame.to(eyes), similarity_from_points(src, eyes), (h, w))


def align_face(image: torch.Tensor, eyes: torch.Tensor, size: int) -> torch.Tensor:
    """An aligned ``size`` x ``size`` crop of ``image`` (C, H, W) with ``eyes`` (2, 2) moved to the canonical position."""
    from kornia.geometry.transform import warp_perspective

    dst = canonical_eyes(size)[None]
    m = similarity_from_points(eyes[None].float(), dst)
    return warp_perspective(image[None].float(), m, (size, size), padding_mode="border", align_corners=True)[
        0
    ].clamp(0, 1)
