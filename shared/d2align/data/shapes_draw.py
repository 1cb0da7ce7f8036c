"""Drawing primitives of the synthetic "shapes" dataset: object outlines, textures, clutter.

All functions are pure given a `numpy.random.Generator`: the same generator state gives the
same output. Images are uint8 BGR arrays of shape (H, W, 3) (OpenCV's channel order, which is
also detectron2's default `INPUT.FORMAT`); masks are bool arrays of shape (H, W).

Object shapes are defined in a unit frame where the unrotated object spans [-1, 1] x [-1, 1],
as a list of closed polygons, each with a fill value: 1 adds area, 0 cuts a hole (ring,
crescent). A shape is then scaled to its extent (w, h), rotated and translated.
"""

from typing import List, Tuple

import cv2
import numpy as np

__all__ = [
    "CLASS_NAMES",
    "draw_distractors",
    "object_mask",
    "occlude",
    "occlusion_ok",
    "paint_object",
    "render_background",
]

# The classes, one shape family each. Their order fixes the category ids (1-based in the JSON).
CLASS_NAMES = ("ellipse", "triangle", "star", "ring", "crescent", "cross")

_SHIFT = 4  # sub-pixel bits of cv2.fillPoly coordinates
Polygons = List[Tuple[np.ndarray, int]]  # (points (N, 2) float, fill value 0 or 1)


def _circle(n: int, r: float = 1.0, cx: float = 0.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), r * np.sin(t)], axis=1)


def _densify(poly: np.ndarray, per_edge: int) -> np.ndarray:
    """Insert `per_edge - 1` evenly spaced points on every edge of the closed polygon (N, 2)."""
    nxt = np.roll(poly, -1, axis=0)
    t = np.arange(per_edge)[None, :, None] / per_edge
    return (poly[:, None] * (1 - t) + nxt[:, None] * t).reshape(-1, 2)


def _wobble(poly: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Scale each point radially (about the origin) by a smooth random periodic factor."""
    theta = np.arctan2(poly[:, 1], poly[:, 0])
    k = np.arange(2, 6)
    coef = rng.uniform(-1.0, 1.0, size=k.size) / k
    phase = rng.uniform(0.0, 2.0 * np.pi, size=k.size)
    factor = 1.0 + amplitude * np.sin(theta[:, None] * k + phase).dot(coef)
    return poly * factor[:, None]


def _unit_shape(class_idx: int, rng: np.random.Generator) -> Polygons:
    """Polygons of one random instance of class `class_idx`, in the unit frame."""
    name = CLASS_NAMES[class_idx]
    if name == "ellipse":
        return [(_circle(64), 1)]
    if name == "triangle":
        apex = rng.uniform(-0.6, 0.6)
        return [(_densify(np.array([[apex, -1.0], [1.0, 1.0], [-1.0, 1.0]]), 16), 1)]
    if name == "star":
        inner = rng.uniform(0.38, 0.55)
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [(_densify(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 6), 1)]
    if name == "ring":
        return [(_circle(64), 1), (_circle(48, rng.uniform(0.45, 0.65), rng.uniform(-0.1, 0.1)), 0)]
    if name == "crescent":
        return [(_circle(64), 1), (_circle(64, rng.uniform(0.75, 0.9), rng.uniform(0.35, 0.6)), 0)]
    t = rng.uniform(0.2, 0.38)  # cross: half thickness of the arms
    corners = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t)]
    corners += [(-1, t), (-1, -t), (-t, -t)]
    return [(_densify(np.array(corners, dtype=np.float64), 4), 1)]


def object_mask(
    class_idx: int,
    center: Tuple[float, float],
    extent: Tuple[float, float],
    angle: float,
    image_size: Tuple[int, int],
    rng: np.random.Generator,
) -> Tuple[np.ndarray, int]:
    """Render one object with an irregular outline.

    Args:
        class_idx: index into `CLASS_NAMES`.
        center: (x, y) of the object's centre in absolute pixels (may lie outside the image).
        extent: (w, h) of the unrotated object in pixels (its aspect ratio is w / h).
        angle: rotation in radians.
        image_size: (H, W) of the image.
        rng: random generator for the outline's irregularity.

    Returns:
        mask (H, W) bool: the object's pixels inside the image (truncated at the borders).
        full_area: number of pixels of the whole object, including the parts outside the image.
    """
    height, width = image_size
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, sin], [-sin, cos]])
    polys = []
    for poly, value in _unit_shape(class_idx, rng):
        poly = _wobble(poly, rng, rng.uniform(0.06, 0.16) if value else 0.05)
        polys.append((poly * np.asarray(extent) / 2.0 @ rot + np.asarray(center), value))
    pts = np.concatenate([p for p, _ in polys])
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + 2
    patch = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    for poly, value in polys:
        fixed = np.round((poly - (x0, y0)) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(patch, [fixed], value, lineType=cv2.LINE_8, shift=_SHIFT)
    mask = np.zeros((height, width), dtype=bool)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix0 < ix1 and iy0 < iy1:
        mask[iy0:iy1, ix0:ix1] = patch[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] > 0
    return mask, int(np.count_nonzero(patch))


def occlude(masks: List[np.ndarray]) -> List[np.ndarray]:
    """Visible parts of objects drawn in order: each later object hides the earlier ones.

    Args:
        masks: K bool arrays (H, W), the in-image pixels of each object, in drawing order.

    Returns:
        K bool arrays (H, W): mask k minus the union of masks k+1..K-1 (pairwise disjoint).
    """
    visible = []
    covered = np.zeros_like(masks[0]) if masks else None
    for mask in reversed(masks):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


def occlusion_ok(visible_area: int, full_area: int, min_pixels: int, min_fraction: float) -> bool:
    """Whether an object with `visible_area` of its `full_area` pixels visible is annotatable."""
    return visible_area >= min_pixels and visible_area >= min_fraction * full_area


def _hsv_to_bgr(h: float, s: float, v: float) -> np.ndarray:
    """One colour from OpenCV HSV (h in [0, 180), s, v in [0, 255]) to float32 BGR (3,)."""
    hsv = np.array([[[h % 180, s, v]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _pattern(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random texture (H, W) float32 in [0, 1]: smooth noise, gradient, stripes or checker."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    alpha = rng.uniform(0.0, np.pi)
    u = xx * np.cos(alpha) + yy * np.sin(alpha)
    v = -xx * np.sin(alpha) + yy * np.cos(alpha)
    kind = rng.integers(4)
    if kind == 0:
        cell = int(rng.choice([8, 16, 32]))
        coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
        big_size = (width + 2 * cell, height + 2 * cell)
        big = cv2.resize(coarse, big_size, interpolation=cv2.INTER_CUBIC)
        return np.clip(big[cell : cell + height, cell : cell + width], 0.0, 1.0)
    if kind == 1:
        return (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    period = rng.uniform(6.0, 40.0)
    if kind == 2:
        return 0.5 + 0.5 * np.sin(2.0 * np.pi * u / period)
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured, low-saturation background (H, W, 3) uint8 BGR."""
    c1 = _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 80), rng.uniform(50, 210))
    c2 = _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 80), rng.uniform(50, 210))
    t = _pattern(rng, height, width)[..., None]
    img = c1 * (1.0 - t) + c2 * t
    img += rng.uniform(3.0, 12.0) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_distractors(img: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Draw `count` clutter items in place: line segments, scribbles and small random blobs.

    None of them is shaped like a class: lines and scribbles are thin and of any colour, blobs are
    small random polygons, less saturated than the objects.
    """
    height, width = img.shape[:2]
    for _ in range(count):
        kind = rng.integers(3)
        saturation = rng.uniform(0, 255) if kind < 2 else rng.uniform(0, 100)
        colour = _hsv_to_bgr(rng.uniform(0, 180), saturation, rng.uniform(30, 255))
        colour = tuple(float(c) for c in colour)
        center = rng.uniform((0, 0), (width, height))
        if kind == 0:
            delta = rng.normal(0.0, width / 5.0, size=2)
            pts = np.round([center - delta, center + delta]).astype(int)
            cv2.line(img, tuple(pts[0]), tuple(pts[1]), colour, int(rng.integers(1, 4)))
        elif kind == 1:
            pts = center + np.cumsum(rng.normal(0.0, width / 20.0, size=(6, 2)), axis=0)
            thickness = int(rng.integers(1, 3))
            cv2.polylines(img, [np.round(pts).astype(np.int32)], False, colour, thickness)
        else:
            n = int(rng.integers(5, 10))
            angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
            radii = rng.uniform(3.0, 10.0) * rng.uniform(0.3, 1.0, n)
            pts = center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], colour)


def paint_object(img: np.ndarray, mask: np.ndarray, class_idx: int, rng: np.random.Generator):
    """Paint one object in place over `mask` (H, W) bool: a saturated colour whose hue lies in a
    band of the class (bands of neighbouring classes overlap a little), shaded by a random linear
    gradient, with pixel noise."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    band = 180.0 / len(CLASS_NAMES)
    hue = class_idx * band + rng.uniform(-0.6, 0.6) * band
    colour = _hsv_to_bgr(hue, rng.uniform(130, 255), rng.uniform(120, 255))
    alpha = rng.uniform(0.0, 2.0 * np.pi)
    proj = xs * np.cos(alpha) + ys * np.sin(alpha)
    span = max(float(proj.max() - proj.min()), 1.0)
    shade = 1.0 + rng.uniform(0.1, 0.35) * (2.0 * (proj - proj.min()) / span - 1.0)
    pixels = colour[None, :] * shade[:, None].astype(np.float32)
    pixels += 6.0 * rng.standard_normal(pixels.shape, dtype=np.float32)
    img[ys, xs] = np.clip(pixels, 0, 255).astype(np.uint8)
