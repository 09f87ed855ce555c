"""The image files a user points `predict` at, and output names that never collide."""

import os

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def list_images(inputs):
    """(path, output name without extension) of every image to process, in order.

    Files named explicitly are always tried; directories contribute their
    files with an image extension, recursively, named by their relative
    path. Names are unique: see `unique_names`.
    """
    found = []
    for item in inputs:
        if not os.path.isdir(item):
            found.append((item, os.path.basename(item)))
            continue
        for root, dirs, files in os.walk(item):
            dirs.sort()
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    path = os.path.join(root, name)
                    found.append((path, os.path.relpath(path, item)))
    return list(zip([path for path, _ in found], unique_names([rel for _, rel in found])))


def unique_names(relative_paths):
    """Output names (relative path without extension) that never collide.

    A name shared by several inputs keeps the extension (``a_png``); one
    still shared (the same relative path from two inputs) gets ``_2``,
    ``_3``, ... in input order.
    """
    stems = [os.path.splitext(rel)[0] for rel in relative_paths]
    shared = {stem for stem in stems if stems.count(stem) > 1}
    names, used = [], set()
    for rel, stem in zip(relative_paths, stems):
        name = stem + "_" + os.path.splitext(rel)[1].lstrip(".") if stem in shared else stem
        candidate, number = name, 1
        while candidate in used:
            number += 1
            candidate = f"{name}_{number}"
        used.add(candidate)
        names.append(candidate)
    return names
