"""Model selection over a run's checkpoints (--mode=best), resumable.

The reference picks the checkpoint with the best mIoU on the target val split;
scoring 60 checkpoints of a 120k-step run takes hours, so every result is
cached in a JSON file as soon as it is known, and a rerun after an
interruption only scores the checkpoints still missing. The cache records the
evaluation settings (a different split or size must not reuse old numbers)
and, per checkpoint, the size and time of its index file (a checkpoint
rewritten by a new run in the same directory is scored again).
"""

import json
import os

FORMAT_VERSION = 1


def _fingerprint(prefix):
    stat = os.stat(prefix + ".index")
    return [stat.st_size, stat.st_mtime_ns]


class SweepCache:
    """Per-checkpoint evaluation results in a JSON file, rewritten atomically.

    Args:
      path: the JSON file (created on the first `store`).
      settings: JSON-serialisable dict of everything the results depend on
        besides the checkpoint.

    Raises:
      ValueError: the file holds results for other settings, or is not a cache.
    """

    def __init__(self, path, settings):
        self.path = path
        self.settings = settings
        self.entries = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                try:
                    cached = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: not a sweep cache ({e})") from e
            if cached.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: not a sweep cache of format {FORMAT_VERSION}")
            if cached["settings"] != settings:
                raise ValueError(
                    f"{path} holds results for other settings ({cached['settings']}, now "
                    f"{settings}); use another output directory or delete it")
            self.entries = cached["checkpoints"]

    def lookup(self, prefix):
        """The cached summary of a checkpoint, or None if absent or stale."""
        entry = self.entries.get(os.path.basename(prefix))
        if entry is None or entry["fingerprint"] != _fingerprint(prefix):
            return None
        return entry["summary"]

    def store(self, prefix, step, summary):
        """Records a checkpoint's summary and rewrites the file."""
        self.entries[os.path.basename(prefix)] = {
            "step": step, "fingerprint": _fingerprint(prefix), "summary": summary}
        write_json(self.path, {"format_version": FORMAT_VERSION, "settings": self.settings,
                               "checkpoints": self.entries})


def write_json(path, content):
    """Writes JSON through a temporary file and a rename: a kill never leaves half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temp = path + ".incomplete"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
        f.write("\n")
    os.replace(temp, path)


def run_sweep(checkpoints, score, cache, on_new_result=None, skip_errors=(), on_skipped=None):
    """Scores every checkpoint, reusing the cached results.

    Args:
      checkpoints: list of (step, prefix), e.g. `checkpoint_io.list_checkpoints`.
      score: callable(prefix) -> summary dict (`evaluation.summarize`).
      cache: a `SweepCache`.
      on_new_result: optional callable(step, prefix, summary), called for each
        checkpoint scored now (not for cached ones).
      skip_errors: exception types of `score` that skip one checkpoint (a
        damaged file) instead of ending the sweep; nothing is cached for it,
        so a rerun tries it again.
      on_skipped: optional callable(step, prefix, error) for each one skipped.

    Returns:
      dict step -> summary, for every checkpoint not skipped.
    """
    results = {}
    for step, prefix in checkpoints:
        summary = cache.lookup(prefix)
        if summary is None:
            try:
                summary = score(prefix)
            except skip_errors as error:
                if on_skipped is not None:
                    on_skipped(step, prefix, error)
                continue
            cache.store(prefix, step, summary)
            if on_new_result is not None:
                on_new_result(step, prefix, summary)
        results[step] = summary
    return results


def best_and_last(results, key="miou"):
    """(step of the best `key`, last step); the earlier step wins a tie."""
    last = max(results)
    best = max(sorted(results), key=lambda step: results[step][key] or 0.0)
    return best, last
