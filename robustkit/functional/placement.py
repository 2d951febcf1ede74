"""Patch and mask compositing as differentiable functions on kornia warps.

A patch is a texture ``(C, h, w)`` with an alpha mask ``(1, h, w)`` in [0, 1]. It is placed in an image
by a homography (``placement_matrix``) mapping patch pixel coordinates to image pixel coordinates
(pixel centres at integers, as kornia's ``align_corners=True``): optional perspective distortion in the
patch frame, then scale, rotation (degrees, counter-clockwise as in kornia / OpenCV) and translation
to a centre. Texture and alpha are warped together (premultiplied) with bilinear sampling, so the
result is differentiable in the texture, and composited over the image.

Masks that live in image coordinates (eyeglass frames, stickers, rectangles) replace pixels through
:func:`replace` or carry an additive perturbation through :func:`masked_add`.

Object coordinates (the bottom of this module): an object's box is the unit square, mapped into each
image by the object's corners (``ObjectGeometry``). Sticker masks are drawn there (:func:`anchor`);
patch placements are sampled there (:func:`sample_object_placement`, the centre on the object's
footprint) and mapped by :func:`object_placement_matrix`, clipped to the footprint (``paste(clip=)``).
Small pose changes of a worn artefact (eyeglass frames): :func:`pose_matrix` and :func:`repose`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from kornia.geometry.transform import get_perspective_transform, warp_perspective

from .random import GeneratorLike, uniform


def shape_mask(kind: str, h: int, w: int | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Anti-aliased ``circle`` (inscribed disk) or ``square`` alpha mask of shape (1, h, w)."""
    w = h if w is None else w
    if kind == "square":
        return torch.ones(1, h, w, device=device, dtype=dtype)
    if kind != "circle":
        raise ValueError(f"patch_type must be 'circle' or 'square', got {kind!r}")
    yy = torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2
    xx = torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2
    r = torch.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    radius = min(h, w) / 2
    return (radius - r + 0.5).clamp(0, 1)[None]


def side_for_area(kind: str, fraction: float, h: int, w: int) -> float:
    """Side (square) or diameter (circle) in pixels of a patch covering ``fraction`` of an h x w image."""
    area = fraction * h * w
    return math.sqrt(area) if kind == "square" else math.sqrt(4 * area / math.pi)


def _homogeneous(a: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) -> (N, 3, 3)."""
    row = torch.zeros(a.shape[0], 1, 3, device=a.device, dtype=a.dtype)
    row[:, 0, 2] = 1
    return torch.cat([a, row], 1)


def placement_matrix(
    angle: torch.Tensor,
    side: torch.Tensor,
    center: torch.Tensor,
    patch_hw: tuple[int, int],
    distortion: torch.Tensor | None = None,
) -> torch.Tensor:
    """Homographies (N, 3, 3) from patch pixels to image pixels.

    ``angle`` (N,) degrees; ``side`` (N,) rendered width of the patch in image pixels; ``center`` (N, 2)
    (x, y) in image pixels; ``distortion`` (N, 4, 2) inward corner offsets as fractions of the patch's
    half size (perspective, as torchvision / ART sample it), or ``None``.
    """
    ph, pw = patch_hw
    dev, dt = angle.device, angle.dtype
    n = angle.shape[0]
    k = side / pw
    a = torch.deg2rad(angle)
    cos, sin = torch.cos(a) * k, torch.sin(a) * k
    cx, cy = (pw - 1) / 2, (ph - 1) / 2
    # x' = R S (p - c_p) + center, counter-clockwise rotation on screen (y axis pointing down)
    m = torch.zeros(n, 2, 3, device=dev, dtype=dt)
    m[:, 0, 0], m[:, 0, 1] = cos, sin
    m[:, 1, 0], m[:, 1, 1] = -sin, cos
    m[:, 0, 2] = center[:, 0] - cos * cx - sin * cy
    m[:, 1, 2] = center[:, 1] + sin * cx - cos * cy
    out = _homogeneous(m)
    if distortion is not None:
        start = torch.tensor([[0, 0], [pw - 1, 0], [pw - 1, ph - 1], [0, ph - 1]], device=dev, dtype=dt)
        start = start[None].expand(n, 4, 2)
        inward = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], device=dev, dtype=dt)
        half = torch.tensor([(pw - 1) / 2, (ph - 1) / 2], device=dev, dtype=dt)
        end = start + inward * distortion * half
        out = out @ get_perspective_transform(start, end)
    return out


def sample_placement(
    n: int,
    generator: GeneratorLike,
    image_hw: tuple[int, int],
    base_side: float,
    *,
    rotation_max: float = 0.0,
    scale_min: float = 1.0,
    scale_max: float = 1.0,
    distortion_scale_max: float = 0.0,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Random placements: scale in [scale_min, scale_max] times ``base_side``, rotation in
    [-rotation_max, rotation_max] degrees, a centre keeping the unrotated patch inside the image, and
    corner distortion up to ``distortion_scale_max``. Returns recordable tensors."""
    h, w = image_hw

    def u(*shape: int) -> torch.Tensor:
        return uniform((n, *shape), generator, device, torch.float32)

    scale = scale_min + (scale_max - scale_min) * u()
    side = scale * base_side
    half = side / 2
    lo_x, hi_x = half - 0.5, w - 0.5 - half
    lo_y, hi_y = half - 0.5, h - 0.5 - half
    mid_x, mid_y = torch.full_like(side, (w - 1) / 2), torch.full_like(side, (h - 1) / 2)
    fx, fy = u(), u()
    cx = torch.where(hi_x > lo_x, lo_x + (hi_x - lo_x) * fx, mid_x)
    cy = torch.where(hi_y > lo_y, lo_y + (hi_y - lo_y) * fy, mid_y)
    out = {
        "angle": (u() * 2 - 1) * rotation_max,
        "scale": scale,
        "side": side,
        "center": torch.stack([cx, cy], 1),
    }
    if distortion_scale_max > 0:
        out["distortion"] = u(4, 2) * distortion_scale_max
    return out


def sample_object_placement(
    geometry: ObjectGeometry, generator: GeneratorLike, image_hw: tuple[int, int], base_side: float, *,
    rotation_max: float = 0.0, scale_min: float = 1.0, scale_max: float = 1.0,
    distortion_scale_max: float = 0.0, resolution: int = 32,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Random placements of a patch in object coordinates, one per object of ``geometry``: ``side``
    (``base_side`` in object units, times a scale in [scale_min, scale_max]) and ``center`` (a, b) in the
    object's unit square, rotation in [-rotation_max, rotation_max] degrees of the object's frame, corner
    distortion up to ``distortion_scale_max``. The centre is uniform over the object's footprint (seen
    in object coordinates at ``resolution`` cells a side) where the unrotated patch stays inside the
    object's box, else over the box positions that keep it inside. Map them into the images with
    :func:`object_placement_matrix`."""
    n, device = len(geometry), geometry.corners.device

    def u(*shape: int) -> torch.Tensor:
        return uniform((n, *shape), generator, device, torch.float32)

    scale = scale_min + (scale_max - scale_min) * u()
    side = scale * base_side
    half = (side / 2).clamp(max=0.5)
    cell = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution
    a, b = cell[None, :].expand(resolution, resolution), cell[:, None].expand(resolution, resolution)
    inside = ((a[None] >= half[:, None, None]) & (a[None] <= 1 - half[:, None, None])
              & (b[None] >= half[:, None, None]) & (b[None] <= 1 - half[:, None, None]))  # fmt: skip
    on = geometry.to(device).in_object(image_hw, resolution)[:, 0] > 0.5
    weight = (inside & on).flatten(1).float()
    weight = torch.where(weight.sum(1, keepdim=True) > 0, weight, inside.flatten(1).float())
    cdf = weight.cumsum(1)
    pick = torch.searchsorted(cdf, (u() * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=cdf.shape[1] - 1)
    jitter = (u(2) - 0.5) / resolution
    center = torch.stack([a.flatten()[pick], b.flatten()[pick]], 1) + jitter
    center = torch.minimum(torch.maximum(center, half[:, None]), 1 - half[:, None])
    out = {"angle": (u() * 2 - 1) * rotation_max, "scale": scale, "side": side, "center": center}
    if distortion_scale_max > 0:
        out["distortion"] = u(4, 2) * distortion_scale_max
    return out


def object_placement_matrix(corners: torch.Tensor, *placement: Any) -> torch.Tensor:
    """Homographies (N, 3, 3) from patch pixels to image pixels for a placement in object coordinates
    (``placement``: the arguments of :func:`placement_matrix`, with ``side`` and ``center`` in units of
    the object's box and ``angle`` in its frame), carried into each image by the object's ``corners``
    (N, 4, 2)."""
    inner = placement_matrix(*placement)
    return unit_to_image(corners.to(inner.dtype)) @ inner


def placement_in_image(corners: torch.Tensor, place: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Object-coordinate placements (``center``, ``side``, ``angle``) described in image pixels for
    display: the centre mapped by the object's ``corners`` (N, 4, 2), the side scaled by the square root
    of the object's area, the angle turned with the object's top edge (perspective left out)."""
    to_image = unit_to_image(corners.to(torch.float32))
    c = place["center"].to(torch.float32)
    p = to_image @ torch.cat([c, torch.ones_like(c[:, :1])], 1)[..., None]
    center = p[:, :2, 0] / p[:, 2:, 0]
    x, y = corners[..., 0].to(torch.float32), corners[..., 1].to(torch.float32)
    area = 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1).abs()
    top = corners[:, 1] - corners[:, 0]
    turn = torch.rad2deg(torch.atan2(top[:, 1].to(torch.float32), top[:, 0].to(torch.float32)))
    return {"center": center, "side": place["side"] * area.sqrt(), "angle": place["angle"] - turn}


def render(
    texture: torch.Tensor, alpha: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a texture (C, h, w) or (N, C, h, w) and its alpha into image space.

    Returns the premultiplied colour layer (N, C, H, W) and alpha (N, 1, H, W), bilinear and
    differentiable in texture, alpha and matrix.
    """
    n = matrix.shape[0]
    if texture.ndim == 3:
        texture = texture[None].expand(n, *texture.shape)
    if alpha.ndim == 3:
        alpha = alpha[None].expand(n, *alpha.shape)
    src = torch.cat([texture * alpha, alpha], 1)
    out = warp_perspective(
        src, matrix.to(src.dtype), size, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    c = texture.shape[1]
    return out[:, :c], out[:, c:].clamp(0, 1)


def composite(x: torch.Tensor, layer: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Alpha-composite a premultiplied layer over images: ``x * (1 - alpha) + layer``."""
    return (x * (1 - alpha) + layer).clamp(0, 1)


def paste(
    x: torch.Tensor,
    texture: torch.Tensor,
    alpha: torch.Tensor,
    matrix: torch.Tensor,
    clip: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place a patch into each image of ``x`` (N, C, H, W) with homographies (N, 3, 3); ``clip`` (N or
    1, 1, H, W) in [0, 1]: where the patch may land (an object's footprint), multiplying its alpha.

    Returns the composited images and the warped alpha (the patch's footprint).
    """
    layer, a = render(texture, alpha, matrix, (x.shape[-2], x.shape[-1]))
    if clip is not None:
        clip = clip.to(layer.dtype)
        layer, a = layer * clip, a * clip
    return composite(x, layer, a), a


def replace(x: torch.Tensor, texture: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pixels under ``mask`` (N or 1, 1, H, W) in [0, 1] take the texture's values; others keep ``x``."""
    return x * (1 - mask) + texture * mask


def masked_add(x: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``clip(x + mask * delta)``: an additive perturbation confined to a mask (RP2 stickers)."""
    return (x + mask * delta).clamp(0, 1)


def similarity_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The similarity transforms (N, 3, 3) mapping two points ``src`` (N, 2, 2) onto ``dst`` (N, 2, 2)
    (rotation, uniform scale, translation), e.g. canonical eye centres onto detected ones."""
    s0, s1 = src[:, 0], src[:, 1]
    d0, d1 = dst[:, 0], dst[:, 1]
    vs, vd = s1 - s0, d1 - d0
    # complex ratio vd / vs = a + ib
    denom = (vs**2).sum(1).clamp_min(1e-12)
    a = (vd[:, 0] * vs[:, 0] + vd[:, 1] * vs[:, 1]) / denom
    b = (vd[:, 1] * vs[:, 0] - vd[:, 0] * vs[:, 1]) / denom
    m = torch.zeros(src.shape[0], 2, 3, device=src.device, dtype=src.dtype)
    m[:, 0, 0], m[:, 0, 1] = a, -b
    m[:, 1, 0], m[:, 1, 1] = b, a
    m[:, 0, 2] = d0[:, 0] - (a * s0[:, 0] - b * s0[:, 1])
    m[:, 1, 2] = d0[:, 1] - (b * s0[:, 0] + a * s0[:, 1])
    return _homogeneous(m)


def warp_mask(mask: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Warp an image-space mask (1, H', W') or (N, 1, H', W') with homographies into (N, 1, H, W)."""
    n = matrix.shape[0]
    if mask.ndim == 3:
        mask = mask[None].expand(n, *mask.shape)
    return warp_perspective(mask, matrix.to(mask.dtype), size, mode="bilinear", padding_mode="zeros").clamp(
        0, 1
    )


def centroid(mask: torch.Tensor) -> torch.Tensor:
    """The centre of mass (N, 2), (x, y) in pixels, of masks (N, 1, H, W) (the image centre where empty)."""
    h, w = mask.shape[-2:]
    weight = mask[:, 0].to(torch.float32)
    total = weight.flatten(1).sum(1)
    xs = torch.arange(w, device=mask.device, dtype=torch.float32)
    ys = torch.arange(h, device=mask.device, dtype=torch.float32)
    cx = (weight.sum(1) * xs).sum(1) / total.clamp_min(1e-12)
    cy = (weight.sum(2) * ys).sum(1) / total.clamp_min(1e-12)
    middle = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=mask.device)
    return torch.where((total > 0)[:, None], torch.stack([cx, cy], 1), middle)


def pose_matrix(
    angle: torch.Tensor,
    scale: torch.Tensor,
    translation: torch.Tensor,
    center: torch.Tensor,
    distortion: torch.Tensor | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Homographies (N, 3, 3) of a small pose change in image pixels: ``scale`` (N,) and a rotation by
    ``angle`` (N,) degrees (counter-clockwise on screen, as :func:`placement_matrix`) about ``center``
    (N, 2), then a shift by ``translation`` (N, 2) pixels; ``distortion`` (N, 4, 2), with the image
    ``size`` (H, W), moves the image's corners by those fractions of its half size first (a slight tilt
    out of the image plane)."""
    n = angle.shape[0]
    a = torch.deg2rad(angle.to(torch.float32))
    cos, sin = torch.cos(a) * scale, torch.sin(a) * scale
    m = torch.zeros(n, 2, 3, device=angle.device, dtype=torch.float32)
    m[:, 0, 0], m[:, 0, 1] = cos, sin
    m[:, 1, 0], m[:, 1, 1] = -sin, cos
    m[:, 0, 2] = center[:, 0] + translation[:, 0] - cos * center[:, 0] - sin * center[:, 1]
    m[:, 1, 2] = center[:, 1] + translation[:, 1] + sin * center[:, 0] - cos * center[:, 1]
    out = _homogeneous(m)
    if distortion is not None:
        if size is None:
            raise ValueError("pose_matrix: a distortion needs the image size")
        h, w = size
        start = torch.tensor([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], device=angle.device,
                             dtype=torch.float32)[None].expand(n, 4, 2)  # fmt: skip
        half = torch.tensor([(w - 1) / 2, (h - 1) / 2], device=angle.device)
        out = out @ get_perspective_transform(start, start + distortion.to(torch.float32) * half)
    return out


def repose(
    x: torch.Tensor, layer: torch.Tensor, mask: torch.Tensor, matrix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """An artefact worn on the image moved by homographies (N, 3, 3): its premultiplied colour ``layer``
    (N, C, H, W; the artefact's colours times ``mask``) and its ``mask`` (N, 1, H, W) are warped
    together and composited over ``x`` (N, C, H, W), which stays where it is. Returns the images and
    the warped mask; differentiable in ``layer``."""
    src = torch.cat([layer, mask.to(layer.dtype)], 1)
    out = warp_perspective(src, matrix.to(src.dtype), tuple(x.shape[-2:]), mode="bilinear",
                           padding_mode="zeros", align_corners=True)  # fmt: skip
    c = layer.shape[1]
    moved = out[:, c:].clamp(0, 1)
    return composite(x, out[:, :c], moved), moved


def rect_masks(positions: torch.Tensor, rect_hw: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Hard masks (N, 1, H, W) of axis-aligned rectangles whose top-left corners are ``positions`` (N, 2) (row, col)."""
    h, w = size
    rh, rw = rect_hw
    rows = torch.arange(h, device=positions.device)[None, :, None]
    cols = torch.arange(w, device=positions.device)[None, None, :]
    top, left = positions[:, 0, None, None], positions[:, 1, None, None]
    inside = (rows >= top) & (rows < top + rh) & (cols >= left) & (cols < left + rw)
    return inside[:, None].float()


# ---------------------------------------------------------------------- object-anchored placement
# Object coordinates: the unit square (a, b) in [0, 1]^2 spanning the object's box ((0, 0) its top-left,
# (1, 0) its top-right, as the object is seen upright). An object's corners in an image are the image
# pixel coordinates (pixel centres at integers) of (0, 0), (1, 0), (1, 1), (0, 1) in that order.
UNIT_SQUARE = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))


@dataclass(frozen=True)
class ObjectGeometry:
    """Where the object lies in each of N images: ``corners`` (N, 4, 2) the image pixel coordinates
    (x, y) of the object's unit square (``UNIT_SQUARE`` order), ``mask`` (N, 1, H, W) in [0, 1] the
    object's footprint (None: the quadrilateral of the corners)."""

    corners: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.corners.ndim != 3 or self.corners.shape[1:] != (4, 2):
            raise ValueError(f"object corners must have shape (N, 4, 2), got {tuple(self.corners.shape)}")
        if self.mask is not None and (self.mask.ndim != 4 or self.mask.shape[:2] != (len(self.corners), 1)):
            raise ValueError(
                f"object mask must have shape ({len(self.corners)}, 1, H, W), got {tuple(self.mask.shape)}"
            )

    def __len__(self) -> int:
        return self.corners.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> ObjectGeometry:
        """The geometry of the images ``index``."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return ObjectGeometry(self.corners[idx], None if self.mask is None else self.mask[idx])

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> ObjectGeometry:
        mask = None if self.mask is None else self.mask.to(device, dtype)
        return ObjectGeometry(self.corners.to(device, dtype), mask)

    def repeat(self, reps: int) -> ObjectGeometry:
        """The geometry of ``reps`` sample-major copies of the images (row ``j * N + i`` is image i)."""
        if reps == 1:
            return self
        mask = None if self.mask is None else self.mask.repeat(reps, 1, 1, 1)
        return ObjectGeometry(self.corners.repeat(reps, 1, 1), mask)

    def in_object(self, size: tuple[int, int], resolution: int = 32) -> torch.Tensor:
        """The object's footprint in images of ``size`` seen in object coordinates: (N, 1, R, R) over the
        unit square at ``resolution`` R cells a side (all ones for a footprint that is the corners' box)."""
        foot = self.footprint(size)
        to_object = torch.linalg.inv(object_matrix(self.corners.to(foot.dtype), (resolution, resolution)))
        return warp_perspective(
            foot,
            to_object,
            (resolution, resolution),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )

    def with_footprint(self, size: tuple[int, int]) -> ObjectGeometry:
        """This geometry with its footprint in images of ``size`` computed once and kept as ``mask``, so that
        the footprint calls of an attack's steps cost nothing."""
        return self if self.mask is not None else ObjectGeometry(self.corners, self.footprint(size))

    def footprint(self, size: tuple[int, int]) -> torch.Tensor:
        """The object's mask (N, 1, H, W) in images of ``size``: ``mask`` when given (it must be of that
        size), else the quadrilateral of the corners."""
        if self.mask is not None:
            if tuple(self.mask.shape[-2:]) != tuple(size):
                raise ValueError(f"object mask is {tuple(self.mask.shape[-2:])}, the images {tuple(size)}")
            return self.mask
        # one texel per image pixel along the object's longest edge, so that the edge is anti-aliased over
        # about a pixel whatever the object's size (a coarser grid fades the object's rim inwards)
        edges = (self.corners - self.corners.roll(1, dims=1)).norm(dim=-1)
        res = int(min(max(math.ceil(float(edges.max())) if len(self) else 8, 8), 4 * max(size)))
        ones = torch.ones(1, res, res, device=self.corners.device, dtype=self.corners.dtype)
        return anchor(ones, self, size, clip=False)


def object_matrix(corners: torch.Tensor, texture_hw: tuple[int, int]) -> torch.Tensor:
    """Homographies (N, 3, 3) from the pixels of a texture (h, w) covering an object's unit square to
    image pixels, for objects at ``corners`` (N, 4, 2). Texture pixel (i, j) covers the object square
    cell [j / w, (j + 1) / w] x [i / h, (i + 1) / h]."""
    h, w = texture_hw
    cells = torch.tensor([[1 / w, 0, 0.5 / w], [0, 1 / h, 0.5 / h], [0, 0, 1]], device=corners.device,
                         dtype=corners.dtype)  # fmt: skip
    return unit_to_image(corners) @ cells


def unit_to_image(corners: torch.Tensor) -> torch.Tensor:
    """Homographies (N, 3, 3) from object coordinates (the unit square) to image pixels, for objects at
    ``corners`` (N, 4, 2)."""
    unit = torch.tensor(UNIT_SQUARE, device=corners.device, dtype=corners.dtype)[None]
    return get_perspective_transform(unit.expand(corners.shape[0], 4, 2), corners)


def anchor(
    texture: torch.Tensor, geometry: ObjectGeometry, size: tuple[int, int], *, clip: bool = True
) -> torch.Tensor:
    """A map drawn in object coordinates (C, h, w) or (N, C, h, w) — a sticker mask, a texture — warped
    into each image (N, C, H, W) by the object's corners, bilinear and differentiable; with ``clip``
    multiplied by the object's footprint so that nothing of it lands off the object."""
    matrix = object_matrix(geometry.corners.to(texture.dtype), tuple(texture.shape[-2:]))
    if texture.ndim == 3:
        texture = texture[None].expand(matrix.shape[0], *texture.shape)
    out = warp_perspective(texture, matrix, size, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out * geometry.footprint(size).to(out.dtype) if clip else out
