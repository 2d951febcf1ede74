"""Galleries: stored examples per sample, optimized artifacts (patches, textures) and placements.

Image galleries are grouped by sample: the clean image once, then each attack's adversarial image and
amplified perturbation with the prediction and confidence after the attack. Video samples get an
animated clip per attack (``clip_animation`` when the video helper is installed, else the middle
frame) and a sparkline of the per-frame perturbation norms of the stored 8-bit clip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .charts import sparkline
from .images import amplified, clip_uri, frame_norms, is_image, png_data_uri
from .load import Run

MAX_ARTIFACT_IMAGES = 8  # per attack and key, after removing repeats (a universal patch repeats per batch)


def _caption(run: Run, idx: int, attack: str) -> dict[str, Any]:
    o = run.outcomes.get(attack, {}).get(idx)
    return {
        "attack": attack,
        "pred": run.class_name(o.pred) if o else "–",
        "confidence": o.confidence if o else None,
        "robust": o.robust if o else None,
        "attacked": o.attacked if o else False,
        "target": run.class_name(int(o.metrics["target"])) if o and "target" in o.metrics else None,
    }


def _sample_head(run: Run, idx: int) -> dict[str, Any]:
    s = run.samples.get(idx)
    return {
        "idx": idx,
        "label": run.class_name(s.label if s else None),
        "clean_pred": run.class_name(s.pred if s else None),
        "clean_conf": s.confidence if s else None,
        "correct": s.correct if s else False,
    }


def _gallery(
    run: Run, ndim: int, clean: Callable[[Any], dict[str, Any]], shot: Callable[[Any], dict[str, Any]]
) -> list[dict[str, Any]]:
    """One card per sample with examples of ``ndim`` dimensions: its head, ``clean(example)`` once, and
    per attack the caption and ``shot(example)``."""
    cards: dict[int, dict[str, Any]] = {}
    for a in run.attacks:
        for ex in run.examples.get(a["name"], []):
            if ex.clean.ndim != ndim:
                continue
            if ex.idx not in cards:
                cards[ex.idx] = {**_sample_head(run, ex.idx), **clean(ex), "shots": []}
            cards[ex.idx]["shots"].append({**_caption(run, ex.idx, a["name"]), **shot(ex)})
    return [cards[i] for i in sorted(cards)]


def _image_shot(ex: Any) -> dict[str, Any]:
    diff, scale = amplified(ex.clean, ex.adv)
    return {"adv": png_data_uri(ex.adv), "diff": png_data_uri(diff), "max_change": scale}


def image_gallery(run: Run) -> list[dict[str, Any]]:
    """Per sample: clean thumbnail and, per attack, adversarial and amplified perturbation."""
    return _gallery(run, 3, lambda ex: {"clean": png_data_uri(ex.clean)}, _image_shot)


def _video_shot(ex: Any) -> dict[str, Any]:
    uri, animated = clip_uri(ex.clean, ex.adv)
    linf, l2 = frame_norms(ex.clean, ex.adv)
    return {
        "clip": uri,
        "animated": animated,
        "frames": len(linf),
        "linf": linf,
        "l2": l2,
        "spark": sparkline(linf),
        "linf_max": max(linf) if linf else 0.0,
    }


def video_gallery(run: Run) -> list[dict[str, Any]]:
    """Per sample: per attack an animated clip (clean | adversarial | perturbation) and frame norms."""
    return _gallery(run, 4, lambda ex: {}, _video_shot)


def _distinct(tensors: list[torch.Tensor], limit: int) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for t in tensors:
        if not any(t.shape == o.shape and torch.equal(t, o) for o in out):
            out.append(t)
        if len(out) >= limit:
            break
    return out


def _first_clean(run: Run, attack: str) -> torch.Tensor | None:
    for ex in run.examples.get(attack, []):
        if ex.clean.ndim == 3:
            return ex.clean
    return None


def _positions(run: Run, attack: str) -> dict[str, Any] | None:
    """ROA rectangles (``position`` + ``rect_hw``) and patch placements (``placement``) as shapes."""
    background = _first_clean(run, attack)
    hw = tuple(int(v) for v in background.shape[-2:]) if background is not None else None
    rects, marks = [], []
    for art in run.artifacts.get(attack, []):
        v = art.value
        if art.key == "position" and isinstance(v, list):
            rh, rw = next(
                (a.value for a in run.artifacts[attack] if a.key == "rect_hw" and a.batch == art.batch),
                (0, 0),
            )
            for p in v:
                if isinstance(p, list | tuple) and len(p) == 2:
                    rects.append({"y": float(p[0]), "x": float(p[1]), "h": float(rh), "w": float(rw)})
        elif art.key == "placement" and isinstance(v, dict) and isinstance(v.get("center"), list):
            sides = v.get("side") or []
            angles = v.get("angle") or []
            for k, c in enumerate(v["center"]):
                if isinstance(c, list | tuple) and len(c) == 2:
                    side = float(sides[k]) if k < len(sides) else 0.0
                    ang = float(angles[k]) if k < len(angles) else 0.0
                    marks.append({"cx": float(c[0]), "cy": float(c[1]), "side": side, "angle": ang})
    if not rects and not marks:
        return None
    if hw is None:
        ext = [r["y"] + r["h"] for r in rects] + [m["cy"] + m["side"] for m in marks]
        ext_x = [r["x"] + r["w"] for r in rects] + [m["cx"] + m["side"] for m in marks]
        hw = (int(math.ceil(max(ext))), int(math.ceil(max(ext_x))))
    h, w = hw
    return {
        "h": h,
        "w": w,
        "background": png_data_uri(background) if background is not None else None,
        "rects": rects[:256],
        "marks": marks[:256],
        "count": len(rects) + len(marks),
    }


def artifact_gallery(run: Run) -> list[dict[str, Any]]:
    """Per attack: its optimized images (patch, texture, sticker, occlusion) and placements."""
    out = []
    for a in run.attacks:
        arts = run.artifacts.get(a["name"], [])
        keys: dict[str, list[torch.Tensor]] = {}
        for art in arts:
            v = art.value
            if not isinstance(v, torch.Tensor):
                continue
            if is_image(v):
                keys.setdefault(art.key, []).append(v)
            elif v.ndim == 4 and v.shape[1] in (1, 3):
                keys.setdefault(art.key, []).extend(list(v))
        images = []
        for key, tensors in keys.items():
            for k, t in enumerate(_distinct(tensors, MAX_ARTIFACT_IMAGES)):
                images.append(
                    {
                        "key": key,
                        "n": k,
                        "uri": png_data_uri(t.float().clamp(0, 1) if t.is_floating_point() else t),
                    }
                )
        positions = _positions(run, a["name"])
        other = sorted(
            {art.key for art in arts} - set(keys) - {"position", "rect_hw", "placement", "cascade"}
        )
        if images or positions:
            out.append(
                {
                    "attack": a["name"],
                    "kind": a.get("kind"),
                    "images": images,
                    "positions": positions,
                    "other": other,
                }
            )
    return out
