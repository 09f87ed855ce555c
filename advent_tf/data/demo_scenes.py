"""Procedural street scenes for the demo data: a synthetic and a "real" domain.

Both domains draw the same kind of scene (sky, buildings, trees, a road in
perspective with sidewalks, cars, pedestrians, poles with signs), labelled
with Cityscapes train ids. They differ the way GTA5 and Cityscapes differ:

* appearance (most of the gap): the source is flat-shaded in saturated
  colours with little noise; the target is desaturated with a colour cast,
  lower contrast, an overcast sky, uneven illumination and shadows, window
  texture on buildings, grain and blur;
* layout: in the target the horizon is higher, buildings taller, cars and
  pedestrians larger and the road narrower.

The class of a pixel stays recoverable from cues both domains share (sky at
the top and bright, road dark and central, vegetation green, ...), so an
adapted model can close part of the gap.
"""

import numpy as np

# Cityscapes train ids of the classes drawn.
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = (
    0, 1, 2, 5, 7, 8, 10, 11, 13)
CLASSES = (ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR)

# Per-domain layout parameters, as fractions of the image height/width.
_LAYOUT = {
    "source": dict(horizon=(0.42, 0.52), building=(0.08, 0.30), road_half=(0.30, 0.42),
                   object_scale=0.9),
    "target": dict(horizon=(0.30, 0.40), building=(0.15, 0.30), road_half=(0.22, 0.32),
                   object_scale=1.25),
}

_BASE_RGB = {
    ROAD: (95, 90, 100), SIDEWALK: (185, 160, 150), POLE: (150, 150, 150),
    SIGN: (230, 200, 30), VEGETATION: (60, 140, 45), SKY: (110, 170, 240),
}
_BUILDING_RGB = ((200, 170, 120), (170, 80, 60), (140, 140, 150), (220, 210, 190))


def _layout(rng, height, width, domain):
    """Draws one scene: uint8 train ids [H, W] and object instance ids [H, W]."""
    params = _LAYOUT[domain]
    yy, xx = np.mgrid[0:height, 0:width]
    label = np.full([height, width], SKY, np.uint8)
    instances = np.zeros([height, width], np.int32)
    horizon = int(rng.uniform(*params["horizon"]) * height)

    # Buildings: a row of blocks standing on the horizon, with tree gaps.
    x = 0
    while x < width:
        block = int(rng.uniform(0.12, 0.3) * width)
        top = horizon - int(rng.uniform(*params["building"]) * height)
        kind = BUILDING if rng.random() < 0.8 else VEGETATION
        if kind == VEGETATION:
            cy, cx = horizon - 0.1 * height, x + block / 2
            blob = ((yy - cy) / (0.16 * height)) ** 2 + ((xx - cx) / (block / 1.6)) ** 2 < 1
            label[blob & (yy < horizon)] = VEGETATION
        else:
            label[max(top, 0):horizon, x:x + block] = BUILDING
        x += block

    # Ground: road in perspective, sidewalks elsewhere, verges of vegetation.
    vanish = width * rng.uniform(0.4, 0.6)
    depth = np.clip((yy - horizon) / max(height - horizon, 1), 0, 1)
    road_half = rng.uniform(*params["road_half"]) * width * depth
    walk_half = road_half * 2.2 + 2
    ground = yy >= horizon
    label[ground] = SIDEWALK
    label[ground & (np.abs(xx - vanish) > walk_half + 0.08 * width * depth + 6)] = VEGETATION
    label[ground & (np.abs(xx - vanish) <= road_half)] = ROAD

    def perspective(y):
        return params["object_scale"] * (y - horizon) / max(height - horizon, 1) * height

    # Poles with signs, and pedestrians, on the sidewalks.
    for _ in range(rng.integers(1, 4)):
        side = rng.choice([-1, 1])
        foot = int(rng.uniform(horizon + 0.15 * height, height))
        d = (foot - horizon) / max(height - horizon, 1)
        px = int(vanish + side * (rng.uniform(*params["road_half"]) * width * d * 1.4 + 2))
        tall = int(perspective(foot) * 1.6)
        thick = max(1, int(round(perspective(foot) * 0.05)))
        label[max(foot - tall, 0):foot, max(px, 0):max(px + thick, 0)] = POLE
        if rng.random() < 0.6:
            s = max(2, int(perspective(foot) * 0.18))
            label[max(foot - tall, 0):max(foot - tall + s, 0),
                  max(px - s // 2, 0):max(px + s // 2 + thick, 0)] = SIGN
    for _ in range(rng.integers(0, 4)):
        side = rng.choice([-1, 1])
        foot = int(rng.uniform(horizon + 0.1 * height, height))
        d = (foot - horizon) / max(height - horizon, 1)
        px = vanish + side * rng.uniform(*params["road_half"]) * width * d * 1.7
        tall = perspective(foot) * 0.75
        body = (((yy - (foot - tall * 0.45)) / (tall * 0.45 + 1e-6)) ** 2
                + ((xx - px) / (tall * 0.14 + 0.6)) ** 2 < 1)
        head = (yy - (foot - tall * 0.95)) ** 2 + (xx - px) ** 2 < (tall * 0.1 + 0.5) ** 2
        label[body | head] = PERSON
        instances[body | head] = instances.max() + 1

    # Cars on the road, far ones first so that near ones occlude them.
    feet = np.sort(rng.uniform(horizon + 0.08 * height, height * 1.05, rng.integers(1, 4)))
    for foot in feet:
        d = (foot - horizon) / max(height - horizon, 1)
        tall = perspective(foot) * 0.45
        wide = tall * rng.uniform(1.6, 2.2)
        cx = vanish + rng.uniform(-0.7, 0.7) * rng.uniform(*params["road_half"]) * width * d
        body = (yy < foot) & (yy > foot - tall * 0.6) & (np.abs(xx - cx) < wide / 2)
        cabin = (yy <= foot - tall * 0.6) & (yy > foot - tall) & (np.abs(xx - cx) < wide * 0.32)
        label[body | cabin] = CAR
        instances[body | cabin] = instances.max() + 1
    return label, instances


def _source_colours(rng, label, instances):
    """Flat, saturated shading per class and per object instance."""
    image = np.zeros(label.shape + (3,), np.float32)
    for cls, rgb in _BASE_RGB.items():
        image[label == cls] = rgb
    image[label == BUILDING] = _BUILDING_RGB[rng.integers(len(_BUILDING_RGB))]
    # Each car and pedestrian gets its own colour, as real ones do.
    for instance in range(1, instances.max() + 1):
        image[(instances == instance) & np.isin(label, (CAR, PERSON))] = rng.uniform(20, 235, 3)
    height = label.shape[0]
    shade = np.linspace(1.0, 0.85, height)[:, None, None]
    image = np.where((label == SKY)[..., None], image * shade[::-1], image)
    return image


def _smooth_noise(rng, height, width, cells):
    coarse = rng.standard_normal((cells[0] + 1, cells[1] + 1))
    ys = np.linspace(0, cells[0], height)
    xs = np.linspace(0, cells[1], width)
    y0, x0 = np.minimum(ys.astype(int), cells[0] - 1), np.minimum(xs.astype(int), cells[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _to_target_style(rng, image, label):
    """Turns flat synthetic shading into a dull, grainy, unevenly lit photo."""
    height, width = label.shape
    image = image.copy()
    yy, xx = np.mgrid[0:height, 0:width]
    # Window texture on buildings (absent in the source).
    windows = (label == BUILDING) & (yy % 6 < 3) & (xx % 7 < 3)
    image[windows] *= 0.55
    image[label == SKY] = np.array([205, 210, 215]) + 8 * rng.standard_normal(3)
    grey = image.mean(axis=-1, keepdims=True)
    image = grey + 0.55 * (image - grey)  # Desaturated.
    image *= np.array([1.08, 1.0, 0.84]) * rng.uniform(0.95, 1.05, 3)  # Warm cast.
    image = 128 + 0.75 * (image - 128)  # Lower contrast.
    light = 1 + 0.25 * _smooth_noise(rng, height, width, (2, 3))
    light *= np.linspace(rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), width)[None, :]
    shadow = (_smooth_noise(rng, height, width, (4, 8)) > 0.6) & (yy > height * 0.35)
    image = image * light[..., None] * np.where(shadow, 0.75, 1.0)[..., None]
    image += 10 * _smooth_noise(rng, height, width, (12, 24))[..., None]
    image += 9 * rng.standard_normal(image.shape)
    # 3x3 box blur: softer edges than the renderer's.
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    image = sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)) / 9
    return image


def render_scene(rng, height, width, domain):
    """Draws one labelled scene.

    Args:
      rng: a numpy Generator (the scene is a function of its state).
      height: image height.
      width: image width.
      domain: "source" (synthetic look) or "target" (real look).

    Returns:
      (uint8 RGB image [H, W, 3], uint8 train-id label [H, W]).
    """
    label, instances = _layout(rng, height, width, domain)
    image = _source_colours(rng, label, instances)
    if domain == "target":
        image = _to_target_style(rng, image, label)
    else:
        image = image + 3 * rng.standard_normal(image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label
