r"""Writes the class-ratio prior p_s (eq. 10) of a labelled source split.

p_s is the split's per-class pixel histogram from its manifest, L1-normalised.

  python tools/compute_class_prior.py --manifest=tfrecords/gta5 --split=train \
      --output=tfrecords/gta5/class_prior.json

The output (JSON: class_names, prior, source) is read by
`advent_tf.data.manifest.load_class_prior`, which also accepts a manifest.
"""

from absl import app
from absl import flags

from advent_tf.data import manifest as manifest_lib

_MANIFEST = flags.DEFINE_string(
    "manifest", None, "A manifest file, the shard directory, or a shard pattern.")
_SPLIT = flags.DEFINE_string("split", None, "Split, when the directory holds several.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the prior (JSON).")

flags.mark_flags_as_required(["manifest", "output"])


def main(argv):
    del argv
    manifest = manifest_lib.read_manifest(_MANIFEST.value, _SPLIT.value)
    prior = manifest_lib.class_prior_from_manifest(manifest)
    manifest_lib.save_class_prior(prior, manifest["class_names"], _OUTPUT.value,
                                  source=f"{manifest['dataset']}/{manifest['split']}")
    for name, p in zip(manifest["class_names"], prior):
        print(f"{name:>14s} {p:.5f}")
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
