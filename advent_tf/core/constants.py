"""Constants shared by the data, model, training, evaluation and export code.

Everything here is a fact about the datasets or the reference implementation
(valeoai/ADVENT); keeping it in one module means the converters, pipelines and
exported models cannot disagree about it.
"""

import numpy as np

IGNORE_LABEL = 255

# Per-channel mean of the reference's Caffe-style preprocessing, in BGR order.
IMG_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)

# The 19 Cityscapes evaluation classes, in train-id order.
CITYSCAPES_CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

# SYNTHIA has no terrain, truck or train: the 16-class setting drops them
# (train ids 9, 14, 16 of the 19-class list). The 13-class figures further
# leave out wall, fence and pole (19-class ids 3, 4, 5).
SYNTHIA_16_FROM_19 = tuple(i for i in range(19) if i not in (9, 14, 16))
SYNTHIA_13_FROM_19 = tuple(i for i in SYNTHIA_16_FROM_19 if i not in (3, 4, 5))

# Cityscapes palette (cityscapesscripts colours) in train-id order, RGB.
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
    (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

# TFRecord feature keys, as in deeplab2 / Model Garden / research/deeplab.
KEY_IMAGE = "image/encoded"
KEY_FILENAME = "image/filename"
KEY_FORMAT = "image/format"
KEY_HEIGHT = "image/height"
KEY_WIDTH = "image/width"
KEY_CHANNELS = "image/channels"
# Size of the image file before the converter resized it (absent: not resized).
KEY_SOURCE_HEIGHT = "image/source_height"
KEY_SOURCE_WIDTH = "image/source_width"
KEY_LABEL = "image/segmentation/class/encoded"
KEY_LABEL_FORMAT = "image/segmentation/class/format"

# Keys of a training batch (`data.pipeline.make_train_dataset`), read by the
# methods' train_step and the callbacks.
SOURCE_IMAGE = "source_image"
SOURCE_LABEL = "source_label"
TARGET_IMAGE = "target_image"
DOMAIN_IMAGE = {"source": SOURCE_IMAGE, "target": TARGET_IMAGE}
