"""Label maps: equal to the reference vectors and to the cityscapesscripts table."""

import numpy as np
import pytest

from advent_tf.core import constants
from advent_tf.data import labels


def test_cityscapes_map_equals_reference_vectors(ref):
    lut = labels.cityscapes_label_map().lut
    assert len(lut) == 34  # Ids 0..33 are defined; anything else is an error.
    np.testing.assert_array_equal(lut, ref["g_city_map_vector"][:34])
    np.testing.assert_array_equal(lut, ref["g_gta_id_to_trainid_lut"][:34])
    assert set(ref["g_gta_id_to_trainid_lut"][34:]) == {255}


def test_table_agrees_with_constants():
    by_train_id = sorted((l for l in labels.CITYSCAPES_LABELS if 0 <= l.train_id < 255),
                         key=lambda l: l.train_id)
    assert [l.name for l in by_train_id] == list(constants.CITYSCAPES_CLASS_NAMES)
    np.testing.assert_array_equal([l.color for l in by_train_id], constants.CITYSCAPES_PALETTE)


def test_table_equals_cityscapesscripts():
    official = pytest.importorskip("cityscapesscripts.helpers.labels")
    ours = [(l.name, l.id, l.train_id, l.category, l.cat_id, l.has_instances,
             l.ignore_in_eval, tuple(l.color)) for l in labels.CITYSCAPES_LABELS]
    theirs = [(l.name, l.id, l.trainId, l.category, l.categoryId, l.hasInstances,
               l.ignoreInEval, tuple(l.color)) for l in official.labels]
    assert ours == theirs


def test_synthia_19_and_16():
    raw = np.arange(23)
    train19 = labels.synthia_label_map(19)(raw)
    expected = [labels.SYNTHIA_TO_TRAIN_ID_19.get(i, 255) for i in range(23)]
    np.testing.assert_array_equal(train19, expected)
    train16 = labels.synthia_label_map(16)(raw)
    assert sorted(set(train16.tolist()) - {255}) == list(range(16))
    for raw_id in (16, 18, 20):  # terrain, truck, train
        assert train16[raw_id] == 255
    # Same class, renumbered: bicycle is 18 of 19 and 15 of 16.
    assert train19[11] == 18 and train16[11] == 15
    assert labels.class_names(16)[15] == "bicycle"


def test_undefined_ids_are_errors():
    with pytest.raises(labels.UnknownLabelIdError, match=r"\[40\]"):
        labels.cityscapes_label_map()(np.array([[7, 40]]))


def test_label_map_file(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("# raw train\n10 0\n20: 1\n30, 255\n")
    label_map = labels.read_label_map_file(path, num_classes=2)
    np.testing.assert_array_equal(label_map(np.array([10, 20, 30])), [0, 1, 255])
    with pytest.raises(labels.UnknownLabelIdError):
        label_map(np.array([11]))
    path.write_text("10 0\nten 1\n")
    with pytest.raises(ValueError, match=r"map.txt:2"):
        labels.read_label_map_file(path, num_classes=2)
    path.write_text("10 5\n")
    with pytest.raises(ValueError, match=r"map.txt.*outside"):
        labels.read_label_map_file(path, num_classes=2)
