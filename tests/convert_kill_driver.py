"""Converts a folder dataset and dies by SIGKILL at a chosen step of the publication.

Run as a script by test_data_convert.py (one process per kill point):

  python convert_kill_driver.py ROOT OUTPUT_DIR SPLIT NUM_SHARDS KILL_AT

The converter publishes a split by moving and removing files with `os.replace`
and `os.remove`; the KILL_AT-th of those calls (counted together, from 1)
kills the process just before it happens, as `kill -9` or a crash would.
KILL_AT=0 never kills, which also counts the calls of a full publication.
The calls are intercepted here, so the converter needs no test hook.
"""

import os
import signal
import sys

from advent_tf.data import tfrecord_writer
from advent_tf.data import sources


def convert_killed_at(root, output_dir, split, num_shards, kill_at):
    """Converts ROOT (folder layout, 2 classes, ROOT/map.txt) into OUTPUT_DIR.

    Returns:
      The number of `os.replace` and `os.remove` calls, when not killed.
    """
    source = sources.folder(str(root), 2, label_map_file=os.path.join(root, "map.txt"))
    calls = 0

    def killing(function):
        def call(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return call

    replace, remove = os.replace, os.remove
    os.replace, os.remove = killing(replace), killing(remove)
    try:
        tfrecord_writer.convert_split(source, str(output_dir), split, num_shards=num_shards,
                                      num_workers=1)
    finally:
        os.replace, os.remove = replace, remove
    return calls


if __name__ == "__main__":
    root_arg, output_arg, split_arg, shards_arg, kill_arg = sys.argv[1:]
    print(convert_killed_at(root_arg, output_arg, split_arg, int(shards_arg), int(kill_arg)))
