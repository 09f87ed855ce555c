r"""Generates the built-in demo data (synthetic source, "real" target) as TFRecords.

  python tools/make_demo_data.py --output_dir=demo_data [--seed=0]

The demo configuration does this by itself on first run; this tool makes
(or remakes) it by hand.
"""

from absl import app
from absl import flags

from advent_tf.data import demo

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Destination directory.")
_SEED = flags.DEFINE_integer("seed", 0, "The same seed gives the same data.")
_HEIGHT = flags.DEFINE_integer("height", demo.DEFAULT_IMAGE_SIZE[0], "Image height.",
                               lower_bound=32)
_WIDTH = flags.DEFINE_integer("width", demo.DEFAULT_IMAGE_SIZE[1], "Image width.",
                              lower_bound=32)

flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    patterns = demo.make_demo_data(_OUTPUT_DIR.value, seed=_SEED.value,
                                   image_size=(_HEIGHT.value, _WIDTH.value))
    for name, pattern in patterns.items():
        print(f"{name}: {pattern}")


if __name__ == "__main__":
    app.run(main)
