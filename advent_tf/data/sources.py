"""Enumerates the samples of each dataset in its real on-disk layout.

Layouts (see the reference implementation's data loaders):
  gta5:       ROOT/images/NNNNN.png, ROOT/labels/NNNNN.png (Cityscapes ids,
              palette PNG).
  cityscapes: ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png,
              ROOT/gtFine/SPLIT/CITY/*_gtFine_labelIds.png.
  synthia:    ROOT/RGB/NNNNNNN.png, ROOT/GT/LABELS/NNNNNNN.png (16-bit PNG,
              class id in the first channel).
  folder:     ROOT/IMAGE_SUBDIR/**/NAME.{png,jpg,jpeg}, labels matched by
              relative path without extension in ROOT/LABEL_SUBDIR/**/NAME.png,
              plus a label-map file (raw id -> train id).

Only directories are checked here; a missing or bad file is reported per
sample by the converter, so that one bad frame does not hide the others.
"""

import dataclasses
import os
import pathlib
from typing import Callable, Optional

from advent_tf.data import image_io
from advent_tf.data import labels as labels_lib

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetLayoutError(ValueError):
    """The dataset root does not have the expected layout."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image and, for labelled splits, its label file.

    Attributes:
      name: stored as image/filename; the path relative to the image
        directory, as in the reference's list files.
      image_path: the image file.
      label_path: the label file, or None for unlabelled splits.
    """
    name: str
    image_path: str
    label_path: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """What the converter needs to know about one split of a dataset.

    Attributes:
      dataset: dataset kind ("gta5", "cityscapes", "synthia", "folder").
      samples: the samples, in a deterministic (sorted or listed) order.
      read_label: path -> [H, W] raw ids (a module-level function, so that
        it can be sent to worker processes).
      label_map: raw id -> train id map, None when unlabelled.
      class_names: names of the train ids.
    """
    dataset: str
    samples: tuple
    read_label: Callable
    label_map: Optional[labels_lib.LabelMap]
    class_names: tuple


def _require_dir(path, what):
    if not os.path.isdir(path):
        raise DatasetLayoutError(f"{path}: missing directory ({what})")
    return path


def _read_list(list_file):
    try:
        with open(list_file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise DatasetLayoutError(f"{list_file}: cannot read list file ({e.strerror})") from e
    if not names:
        raise DatasetLayoutError(f"{list_file}: the list file is empty")
    return names


def _image_names(image_dir, list_file, pattern="**/*"):
    """Relative image names: from the list file, else every image found."""
    if list_file:
        return _read_list(list_file)
    base = pathlib.Path(image_dir)
    names = sorted(p.relative_to(base).as_posix() for p in base.glob(pattern)
                   if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not names:
        raise DatasetLayoutError(f"{image_dir}: no images found")
    return names


def _samples(image_dir, label_dir, names, label_name):
    return tuple(
        Sample(name=name, image_path=os.path.join(image_dir, name),
               label_path=(os.path.join(label_dir, label_name(name))
                           if label_dir is not None else None))
        for name in names)


def _known_layout(dataset, what, image_dir, label_dir, pattern, label_name, read_label,
                  label_map, labels, num_classes, list_file):
    """A `DatasetSource` for one of the known public layouts.

    Args:
      dataset: the dataset's name.
      what: how error messages name the dataset.
      image_dir: the image folder.
      label_dir: the label folder (only looked at when `labels`).
      pattern: glob of the images under `image_dir` when there is no list file.
      label_name: image name -> label name, both relative.
      read_label: path -> raw label ids.
      label_map: num_classes -> `labels.LabelMap` (raw id -> train id).
      labels: whether the split is labelled.
      num_classes: number of train ids.
      list_file: optional list of image names relative to `image_dir`.
    """
    image_dir = _require_dir(image_dir, f"{what} images")
    label_dir = _require_dir(label_dir, f"{what} labels") if labels else None
    names = _image_names(image_dir, list_file, pattern)
    return DatasetSource(
        dataset=dataset, samples=_samples(image_dir, label_dir, names, label_name),
        read_label=read_label, label_map=label_map(num_classes) if labels else None,
        class_names=tuple(labels_lib.class_names(num_classes)))


def gta5(root, labels=True, num_classes=19, list_file=None):
    """GTA5: images/ and labels/ with identical file names."""
    return _known_layout(
        "gta5", "GTA5", os.path.join(root, "images"), os.path.join(root, "labels"), "*",
        lambda n: n, image_io.read_label_ids, labels_lib.cityscapes_label_map,
        labels, num_classes, list_file)


def _cityscapes_label_name(name):
    return name.replace("_leftImg8bit", "_gtFine_labelIds")


def cityscapes(root, split, labels=True, num_classes=19, list_file=None):
    """Cityscapes: leftImg8bit/SPLIT/CITY images, gtFine/SPLIT/CITY label ids."""
    return _known_layout(
        "cityscapes", f"Cityscapes {split}", os.path.join(root, "leftImg8bit", split),
        os.path.join(root, "gtFine", split), "*/*_leftImg8bit.png", _cityscapes_label_name,
        image_io.read_label_ids, labels_lib.cityscapes_label_map,
        labels, num_classes, list_file)


def synthia(root, labels=True, num_classes=19, list_file=None):
    """SYNTHIA-RAND-CITYSCAPES: RGB/ and GT/LABELS/ (16-bit, id in channel 0)."""
    return _known_layout(
        "synthia", "SYNTHIA", os.path.join(root, "RGB"), os.path.join(root, "GT", "LABELS"), "*",
        lambda n: n, image_io.read_first_channel_ids, labels_lib.synthia_label_map,
        labels, num_classes, list_file)


def folder(root, num_classes, label_map_file=None, labels=True, list_file=None,
           image_subdir="images", label_subdir="labels", class_names=None):
    """Anyone's own data: an image folder, a label folder and a label map.

    Args:
      root: the dataset root.
      num_classes: number of train ids.
      label_map_file: raw id -> train id file (`labels.read_label_map_file`);
        required when `labels`.
      labels: whether the split is labelled.
      list_file: optional list of image names relative to the image folder.
      image_subdir: image folder under `root`.
      label_subdir: label folder under `root`; labels are PNGs matched to
        images by relative path without extension.
      class_names: names of the train ids; default
        `labels.default_class_names` (the Cityscapes names for 19 and 16
        classes, else class_0, class_1, ...).

    Returns:
      A `DatasetSource`.
    """
    image_dir = _require_dir(os.path.join(root, image_subdir), "folder images")
    label_dir, label_map = None, None
    if labels:
        label_dir = _require_dir(os.path.join(root, label_subdir), "folder labels")
        if not label_map_file:
            raise DatasetLayoutError("the folder dataset needs a label-map file for its labels")
        label_map = labels_lib.read_label_map_file(label_map_file, num_classes)
    if class_names is None:
        class_names = labels_lib.default_class_names(num_classes)
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if len(set(class_names)) != num_classes:
        raise ValueError(f"class names must be distinct, got {list(class_names)}")
    names = _image_names(image_dir, list_file)
    return DatasetSource(
        dataset="folder",
        samples=_samples(image_dir, label_dir, names,
                         lambda n: str(pathlib.PurePosixPath(n).with_suffix(".png"))),
        read_label=image_io.read_label_ids,
        label_map=label_map, class_names=tuple(class_names))
