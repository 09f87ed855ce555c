"""The exported SavedModel: signatures, equality with Keras, bad input, saved_model_cli."""

import io
import os
import re
import subprocess
import sys

import keras
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from advent_tf.inference import evaluation_protocol
from advent_tf.inference import segment
from advent_tf.inference import saved_model
from advent_tf.data import labels
from advent_tf.models import build_segmenter

MODEL_SIZE = (16, 32)


def _png(image):
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("export") / "advent")
    tf.keras.utils.set_random_seed(3)
    model = build_segmenter("resnet_tiny", 16, True)
    path = saved_model.export([(model, 1.0)], labels.class_names(16), MODEL_SIZE, export_dir,
                              with_probabilities=True)
    images = np.random.default_rng(0).integers(0, 256, (2, 20, 36, 3), dtype=np.uint8)
    keras_outputs = segment.maps_at_input_resolution([(model, 1.0)], images, MODEL_SIZE, True)
    return {"dir": export_dir, "path": path, "images": images, "weights": len(model.weights),
            "keras": {k: v.numpy() for k, v in keras_outputs.items()}}


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported["path"])


def test_signatures_and_predictions_equal_the_keras_model(exported, loaded):
    assert exported["path"] == os.path.join(exported["dir"], "1")
    assert set(loaded.signatures) == {"serving_default", "image_bytes", "image_tensor"}
    assert int(loaded.num_classes.numpy()) == 16
    assert loaded.class_names.numpy()[-1] == b"bicycle"
    images, expected = exported["images"], exported["keras"]
    from_bytes = loaded.signatures["serving_default"](
        image_bytes=tf.constant([_png(image) for image in images]))
    from_tensor = loaded.signatures["image_tensor"](images=tf.constant(images))
    for outputs in (from_bytes, from_tensor):
        assert outputs["class_map"].shape == (2, 20, 36)
        np.testing.assert_array_equal(outputs["class_map"].numpy(), expected["class_map"])
        np.testing.assert_allclose(outputs["entropy"].numpy(), expected["entropy"], atol=1e-5)
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected["probabilities"],
                                   atol=1e-5)
    assert 0.0 <= from_bytes["entropy"].numpy().min() <= from_bytes["entropy"].numpy().max() <= 1.0
    # Each weight stored once, beside num_classes, class_names and model_size.
    stored = [name for name, _ in tf.train.list_variables(
        os.path.join(exported["path"], "variables", "variables")) if "VARIABLE_VALUE" in name]
    assert len(stored) == exported["weights"] + 3, stored[:5]
    # And each serving function traced once in the graph.
    with open(os.path.join(exported["path"], "saved_model.pb"), "rb") as f:
        graph = saved_model_pb2.SavedModel.FromString(f.read())
    names = [f.signature.name for f in graph.meta_graphs[0].graph_def.library.function]
    for function in ("serve_bytes", "serve_tensor"):
        assert len([n for n in names if re.fullmatch(f"__inference_{function}_\\d+", n)]) == 1


@pytest.mark.parametrize("payload", [
    [b"not an image"], [b""], "truncated", "mixed sizes", []])
def test_malformed_requests_are_errors(exported, loaded, payload):
    png = _png(exported["images"][0])
    if payload == "truncated":
        payload = [png[: len(png) // 2]]
    elif payload == "mixed sizes":
        payload = [png, _png(exported["images"][0][:10])]
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](image_bytes=tf.constant(payload, tf.string))


def test_without_probabilities_the_maps_are_made_in_blocks_with_the_same_values(tmp_path):
    """The default export makes its maps a block of rows at a time: those of the whole logits."""
    keras.utils.set_random_seed(5)
    model = build_segmenter("resnet_tiny", 16, True)
    for index, variable in enumerate(model.trainable_variables):
        # Freshly built, one class wins everywhere; perturbed, the maps vary (more
        # would saturate the softmax: an entropy of 0 everywhere).
        variable.assign_add(tf.random.stateless_normal(variable.shape, [index, 2], stddev=0.04))
    # 300 rows of 401: 81 rows make `BLOCK_BYTES`; three whole blocks and a short one.
    block_rows = evaluation_protocol.BLOCK_BYTES // (4 * 401 * 16)
    assert 300 % block_rows and block_rows < 150
    images = np.random.default_rng(1).integers(0, 256, (1, 300, 401, 3), dtype=np.uint8)
    whole = segment.maps_at_input_resolution([(model, 1.0)], images, MODEL_SIZE, True)
    path = saved_model.export([(model, 1.0)], labels.class_names(16), MODEL_SIZE,
                              str(tmp_path / "export"))
    outputs = tf.saved_model.load(path).signatures["image_tensor"](images=tf.constant(images))
    assert set(outputs) == {"class_map", "entropy"}
    assert len(np.unique(whole["class_map"].numpy())) > 3 and np.ptp(whole["entropy"]) > 0.2
    np.testing.assert_array_equal(outputs["class_map"].numpy(), whole["class_map"].numpy())
    np.testing.assert_allclose(outputs["entropy"].numpy(), whole["entropy"].numpy(),
                               rtol=1e-5, atol=1e-6)
    # The TF1-style loader (TF Serving's kind) runs the blocks' while loop too.
    np.save(tmp_path / "images.npy", images)
    _saved_model_cli("run", "--dir", path, "--tag_set", "serve", "--signature_def",
                     "image_tensor", "--inputs", f"images={tmp_path / 'images.npy'}",
                     "--outdir", str(tmp_path))
    np.testing.assert_array_equal(np.load(tmp_path / "class_map.npy"), whole["class_map"])
    np.testing.assert_allclose(np.load(tmp_path / "entropy.npy"), whole["entropy"],
                               rtol=1e-5, atol=1e-6)


def test_versions_are_never_overwritten(exported):
    assert saved_model.next_version(exported["dir"]) == 2
    # Not the staging directory's owner-only mode: what makedirs gives (umask applied).
    os.makedirs(os.path.join(exported["dir"], "plain"))
    mode = os.stat(os.path.join(exported["dir"], "plain")).st_mode
    os.rmdir(os.path.join(exported["dir"], "plain"))
    assert os.stat(exported["path"]).st_mode == mode
    assert saved_model.resolve_saved_model(exported["dir"]) == exported["path"]
    with pytest.raises(FileExistsError):
        saved_model.export([], labels.class_names(16), MODEL_SIZE, exported["dir"], version=1)


def _saved_model_cli(*args):
    result = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_saved_model_cli_show_and_run(exported, tmp_path):
    shown = _saved_model_cli("show", "--all", "--dir", exported["path"])
    for expected in ("signature_def['serving_default']", "signature_def['image_tensor']",
                     "inputs['image_bytes'] tensor_info", "dtype: DT_STRING",
                     "inputs['images'] tensor_info", "dtype: DT_UINT8", "shape: (-1, -1, -1, 3)",
                     "outputs['class_map']", "outputs['entropy']", "outputs['probabilities']"):
        assert expected in shown
    np.save(tmp_path / "images.npy", exported["images"])
    _saved_model_cli("run", "--dir", exported["path"], "--tag_set", "serve",
                     "--signature_def", "image_tensor",
                     "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", str(tmp_path))
    np.testing.assert_array_equal(np.load(tmp_path / "class_map.npy"),
                                  exported["keras"]["class_map"])
