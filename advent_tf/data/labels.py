"""Raw label id -> train id maps of GTA5, Cityscapes, SYNTHIA and user folders.

Every map distinguishes three cases for a raw id: a train id (0..C-1), a
known id that is ignored (255), and an id the dataset does not define at all.
The last one is an error at conversion time: it means the file is not the
label image it claims to be (wrong folder, colour-coded labels, ...), and
silently ignoring it would quietly drop supervision.
"""

import collections
import re

import numpy as np

from advent_tf.core import constants

_UNKNOWN = -1

# The label table of the official `cityscapesscripts.helpers.labels`, written
# out as data because that package is not a dependency. GTA5 labels use the
# same ids. Fields as in cityscapesscripts; colours are RGB.
CityscapesLabel = collections.namedtuple(
    "CityscapesLabel",
    ["name", "id", "train_id", "category", "cat_id", "has_instances",
     "ignore_in_eval", "color"])

CITYSCAPES_LABELS = tuple(CityscapesLabel(*row) for row in (
    ("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    ("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    ("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    ("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    ("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    ("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    ("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    ("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    ("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    ("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    ("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    ("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    ("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    ("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    ("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    ("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    ("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    ("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    ("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    ("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    ("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    ("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    ("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    ("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    ("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    ("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    ("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    ("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    ("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    ("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    ("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    ("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    ("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    ("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    # Never stored in *_labelIds.png (id -1); kept so the table is complete.
    ("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
))

# SYNTHIA-RAND-CITYSCAPES defines ids 0..22; this is the reference's
# id -> 19-class train id map, every other defined id is ignored.
SYNTHIA_NUM_RAW_IDS = 23
SYNTHIA_TO_TRAIN_ID_19 = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
    10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}


class UnknownLabelIdError(ValueError):
    """A label image holds raw ids that the dataset's map does not define."""


class LabelMap:
    """A raw id -> train id look-up table that rejects undefined ids.

    Attributes:
      num_classes: number of train ids (train ids are 0..num_classes-1).
      lut: int32 [N] table; 255 for ignored ids, -1 for undefined ids.
    """

    def __init__(self, mapping, known_ids, num_classes):
        """Builds the table.

        Args:
          mapping: dict raw id -> train id (0..num_classes-1 or 255).
          known_ids: iterable of every raw id the dataset defines; those not
            in `mapping` are ignored (255).
          num_classes: number of train ids.

        Raises:
          ValueError: a train id is outside 0..num_classes-1 and not 255.
        """
        known_ids = [int(i) for i in known_ids]
        size = max(known_ids + [int(k) for k in mapping] + [0]) + 1
        self.lut = np.full([size], _UNKNOWN, dtype=np.int32)
        self.lut[known_ids] = constants.IGNORE_LABEL
        for raw_id, train_id in mapping.items():
            if not (0 <= train_id < num_classes or train_id == constants.IGNORE_LABEL):
                raise ValueError(
                    f"raw id {raw_id} maps to train id {train_id}, outside "
                    f"0..{num_classes - 1} and not {constants.IGNORE_LABEL}")
            self.lut[int(raw_id)] = train_id
        self.num_classes = num_classes

    def __call__(self, raw):
        """Maps a raw label image to train ids.

        Args:
          raw: integer array of raw ids.

        Returns:
          uint8 array of the same shape: train ids, 255 = ignore.

        Raises:
          UnknownLabelIdError: `raw` holds ids the map does not define.
        """
        raw = np.asarray(raw)
        ids = np.unique(raw)
        bad = ids[(ids < 0) | (ids >= len(self.lut))]
        inside = ids[(ids >= 0) & (ids < len(self.lut))]
        bad = np.concatenate([bad, inside[self.lut[inside] == _UNKNOWN]])
        if bad.size:
            raise UnknownLabelIdError(
                f"label ids {sorted(int(i) for i in bad)[:10]} are not defined "
                "by the label map")
        return self.lut[raw].astype(np.uint8)


def _compress_to_16(mapping):
    """Renumbers 19-class train ids into the SYNTHIA 16-class setting."""
    to_16 = {c19: c16 for c16, c19 in enumerate(constants.SYNTHIA_16_FROM_19)}
    return {raw: to_16.get(train_id, constants.IGNORE_LABEL)
            for raw, train_id in mapping.items()}


def _with_num_classes(mapping, num_classes):
    if num_classes == 19:
        return mapping
    if num_classes == 16:
        return _compress_to_16(mapping)
    raise ValueError(f"num_classes must be 19 or 16, got {num_classes}")


def cityscapes_label_map(num_classes=19):
    """Cityscapes (and GTA5) label ids -> train ids.

    Args:
      num_classes: 19 (Cityscapes benchmark) or 16 (the SYNTHIA setting:
        terrain, truck and train ignored, the rest renumbered in order).

    Returns:
      A `LabelMap` defined for the ids 0..33 of the label table.
    """
    stored = [label for label in CITYSCAPES_LABELS if label.id >= 0]
    mapping = {label.id: label.train_id for label in stored}
    return LabelMap(_with_num_classes(mapping, num_classes),
                    [label.id for label in stored], num_classes)


def synthia_label_map(num_classes=19):
    """SYNTHIA-RAND-CITYSCAPES class ids -> train ids (19 or 16 classes)."""
    return LabelMap(_with_num_classes(SYNTHIA_TO_TRAIN_ID_19, num_classes),
                    range(SYNTHIA_NUM_RAW_IDS), num_classes)


def class_names(num_classes):
    """Class names in train-id order for the 19- or 16-class setting."""
    if num_classes == 19:
        return list(constants.CITYSCAPES_CLASS_NAMES)
    if num_classes == 16:
        return [constants.CITYSCAPES_CLASS_NAMES[i] for i in constants.SYNTHIA_16_FROM_19]
    raise ValueError(f"num_classes must be 19 or 16, got {num_classes}")


def default_class_names(num_classes):
    """The Cityscapes names for 19 and 16 classes, else ``class_0``, ``class_1``, ..."""
    if num_classes in (19, 16):
        return class_names(num_classes)
    return [f"class_{i}" for i in range(num_classes)]


def read_label_map_file(path, num_classes):
    """Reads a user label-map file for the `folder` dataset.

    The format is one `raw_id train_id` pair per line (whitespace, `:` or `,`
    between them); `#` starts a comment. Use train id 255 for raw ids to
    ignore; raw ids absent from the file are treated as errors.

    Args:
      path: the label-map file.
      num_classes: number of train ids.

    Returns:
      A `LabelMap`.

    Raises:
      ValueError: a line that is not a pair of integers, naming file and line.
    """
    mapping = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            fields = re.split(r"[\s:,]+", text)
            if len(fields) != 2 or not all(re.fullmatch(r"\d+", x) for x in fields):
                raise ValueError(
                    f"{path}:{number}: expected 'raw_id train_id', got {line.strip()!r}")
            mapping[int(fields[0])] = int(fields[1])
    if not mapping:
        raise ValueError(f"{path}: the label map is empty")
    try:
        return LabelMap(mapping, mapping.keys(), num_classes)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
