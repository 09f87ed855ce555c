"""The SavedModel served by TF Serving: preprocessing inside, maps at the input size.

Signatures follow Model Garden's export_base (one per input type):

  serving_default, image_bytes: `image_bytes` string [B] of encoded images
      (PNG, JPEG, BMP, GIF first frame). TF Serving's REST API decodes
      {"b64": "..."} values into these strings.
  image_tensor: `images` uint8 [B, H, W, 3] RGB.

Outputs, at the input resolution: `class_map` int32 [B, H, W] (train ids of
the model's classes), `entropy` float32 [B, H, W] (eq. 2, in
[0, 1]: a confidence map to threshold) and, if exported with probabilities,
`probabilities` float32 [B, H, W, C]. The images of one request must share a
size. Malformed or truncated bytes, an empty batch or mixed sizes fail the
request with INVALID_ARGUMENT; nothing is returned for them.

The module also carries `num_classes`, `class_names` and `model_size`
(height, width the network sees) as variables, for clients such as
`advent_tf.predict`.
"""

import os
import re
import shutil
import tempfile

import tensorflow as tf

from advent_tf.inference import segment

_VERSION_RE = re.compile(r"^\d+$")


class SegmentationModule(tf.Module):
    """A segmenter or an ensemble, with preprocessing and post-processing.

    Args:
      members: list of (segmenter, weight), all with len(class_names) classes.
      class_names: the names of the classes, in id order.
      model_size: (height, width) the network sees.
      with_probabilities: also output the probabilities.
    """

    def __init__(self, members, class_names, model_size, with_probabilities=False):
        super().__init__(name="advent_segmentation")
        # Set past tf.Module's tracking: the saved model keeps the variables
        # its signatures capture (`export`); tracking the Keras models as well
        # wrote every weight twice (a SavedModel twice the size of the weights,
        # and twice as much to restore).
        object.__setattr__(self, "_members",
                           [(model, float(weight)) for model, weight in members])
        self._model_size = tuple(int(s) for s in model_size)
        self._with_probabilities = with_probabilities
        self.num_classes = tf.Variable(len(class_names), trainable=False, dtype=tf.int32)
        self.class_names = tf.Variable(list(class_names), trainable=False)
        self.model_size = tf.Variable(self._model_size, trainable=False, dtype=tf.int32)

    def _outputs(self, images):
        return segment.maps_at_input_resolution(self._members, images, self._model_size,
                                                self._with_probabilities)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_tensor(self, images):
        """Maps of a uint8 RGB batch [B, H, W, 3]."""
        with tf.control_dependencies([tf.debugging.assert_positive(
                tf.shape(images)[0], message="empty batch of images")]):
            return self._outputs(tf.identity(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        """Maps of a batch of encoded images of one size."""
        with tf.control_dependencies([tf.debugging.assert_positive(
                tf.size(image_bytes), message="empty batch of images")]):
            first_shape = tf.shape(segment.decode_image(image_bytes[0]))

        def decode(encoded):
            image = segment.decode_image(encoded)
            with tf.control_dependencies([tf.debugging.assert_equal(
                    tf.shape(image), first_shape,
                    message="all images of a request must have the same size")]):
                return tf.identity(image)

        images = tf.map_fn(decode, image_bytes,
                           fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
        return self._outputs(images)


def next_version(export_dir):
    """1 + the largest integer version under `export_dir` (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir) if _VERSION_RE.match(name)]
    return max(versions, default=0) + 1


def export(members, class_names, model_size, export_dir, version=None,
           with_probabilities=False):
    """Writes the SavedModel to `export_dir/<version>/`.

    The model is written to a hidden temporary directory beside it and renamed
    into place: TF Serving watches `export_dir` and must never load a
    half-written version.

    Args:
      members: list of (segmenter, weight).
      class_names: the names of the classes, in id order.
      model_size: (height, width) the network sees.
      export_dir: the model base directory of TF Serving.
      version: integer version; default `next_version(export_dir)`.
      with_probabilities: also output the per-class probabilities.

    Returns:
      The path of the version directory.

    Raises:
      FileExistsError: that version exists already.
    """
    version = next_version(export_dir) if version is None else int(version)
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; pick another --version")
    os.makedirs(export_dir, exist_ok=True)
    module = SegmentationModule(members, class_names, model_size, with_probabilities)
    # The tf.functions themselves, not concrete functions traced here: saving
    # traces them again (in its own context) and, given concrete functions
    # traced outside, stored both traces (every function twice in the graph).
    signatures = {
        "serving_default": module.serve_bytes,
        "image_bytes": module.serve_bytes,
        "image_tensor": module.serve_tensor,
    }
    # Keras 3 layers reach their tf.Variables through wrappers that the
    # TF1-style loader of TF Serving and `saved_model_cli run` does not always
    # restore ("Could not find variable ..."); tracking the variables the
    # signatures capture directly, as keras.export.ExportArchive does, saves
    # every one of them under a path both loaders follow.
    captured = {id(v): v for function in (module.serve_bytes, module.serve_tensor)
                for v in function.get_concrete_function().variables}
    module.captured_variables = list(captured.values())
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=export_dir)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        # mkdtemp makes the directory readable by its owner only; the version
        # gets a directory's usual mode, so that a server running as another
        # user (TF Serving's container, say) can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def resolve_saved_model(path):
    """A version directory, or a model base directory -> its highest version.

    Raises:
      FileNotFoundError: no SavedModel there.
    """
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path) and next_version(path) > 1:
        return os.path.join(path, str(next_version(path) - 1))
    raise FileNotFoundError(f"{path}: neither a SavedModel nor a directory of versions")
