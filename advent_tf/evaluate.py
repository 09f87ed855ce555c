r"""Scores models on a labelled split as the paper does (per-class IoU and mIoU, %).

The newest checkpoint of a run (network, class names and evaluation size
are read from the run):

    python -m advent_tf.evaluate --train_dir=runs/advent \
        --eval_pattern=data/tfrecords/cityscapes/val-*.tfrecord

An ensemble (the paper's AdvEnt+MinEnt, 0.5/0.5):

    python -m advent_tf.evaluate \
        --checkpoints=runs/advent/checkpoints/ckpt-120000,runs/minent/checkpoints/ckpt-120000 \
        --ensemble_weights=0.5,0.5 \
        --eval_pattern=data/tfrecords/cityscapes/val-*.tfrecord --output_dir=eval/ensemble

Every checkpoint of a run (the reference's model selection), resumable:

    python -m advent_tf.evaluate --mode=best --train_dir=runs/advent \
        --eval_pattern=data/tfrecords/cityscapes/val-*.tfrecord

A converted .weights.h5 outside a run needs the network flags
(--backbone, --num_classes, --multi_level; defaults resnet101, 19, multi-level).

Images are resized to --eval_size, the main logits upsampled (align_corners)
to the label resolution, and one confusion matrix is accumulated over the
split. Results: printed tables, `results.json` (and, in best mode, the
per-checkpoint cache `sweep.json`) and TensorBoard scalars under
--output_dir (default for --mode=best: TRAIN_DIR/eval).
"""

import dataclasses
import os

import keras
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from advent_tf.core import host_memory
from advent_tf.experiment import segmenter_weights
from advent_tf.inference import evaluation_protocol
from advent_tf.experiment import model_flags
from advent_tf.inference import sweep
from advent_tf.data import manifest as manifest_lib
from advent_tf.data import pipeline
from advent_tf.models import build_segmenter

_MODE = flags.DEFINE_enum(
    "mode", "single", ["single", "best"],
    "single: the --checkpoints, or the newest checkpoint of --train_dir (several = ensemble); "
    "best: every checkpoint of --train_dir, reporting the best and the last.")
_EVAL_PATTERN = flags.DEFINE_string("eval_pattern", None, "Glob of the labelled split's shards.")
_EVAL_SIZE = flags.DEFINE_list(
    "eval_size", None,
    "WIDTH,HEIGHT of the network input; default: the run's --eval_size, else 1024,512 "
    "(the reference's).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Images per batch.", lower_bound=1)
_CLASS_SUBSET = flags.DEFINE_enum(
    "class_subset", None, ["13"],
    "With a 16-class (SYNTHIA) model: also report the 13-class mIoU (no wall, fence, pole).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "results.json, sweep.json and tensorboard/ (default in best mode: "
    "TRAIN_DIR/eval; in single mode: print only).")

flags.mark_flag_as_required("eval_pattern")


def _read_manifest():
    """The evaluation split's manifest, or None (a warning) when it has none."""
    try:
        return manifest_lib.read_manifest(_EVAL_PATTERN.value)
    except (FileNotFoundError, ValueError) as e:
        logging.warning("%s; assuming its labels have the model's classes", e)
        return None


class _Scorer:
    """Scores members on the split, with a progress bar; knows the settings it scores under.

    Args:
      model: the `config.ModelConfig` of the members.
      run_config: their run's `config.ExperimentConfig`, or None (a file
        outside a run: the split's class names are used when it has the
        model's class count).
      manifest: the split's manifest, or None.
    """

    def __init__(self, model, run_config, manifest):
        if (run_config is None and manifest is not None and manifest["has_labels"]
                and manifest["num_classes"] == model.num_classes):
            model = dataclasses.replace(model, class_names=tuple(manifest["class_names"]))
        self.model = model
        self.size = model_flags.input_size(run_config, _EVAL_SIZE.value, "eval_size")
        # The pattern may select some of the split's shards (e.g. one of two).
        self.num_images = (sum(shard["num_examples"] for shard in
                               manifest_lib.shards_matching(manifest, _EVAL_PATTERN.value))
                           if manifest else None)
        self.subset = None if _CLASS_SUBSET.value is None else int(_CLASS_SUBSET.value)
        if self.subset is not None and model.num_classes != 16:
            raise app.UsageError(f"--class_subset=13 needs a 16-class model, this one has "
                                 f"{model.num_classes}")
        self.label_table = None
        if manifest is not None:
            try:
                self.label_table = evaluation_protocol.label_mapping(manifest["num_classes"],
                                                                     model.num_classes)
            except ValueError as e:
                raise app.UsageError(f"{_EVAL_PATTERN.value}: {e}")

    def __call__(self, members):
        try:
            dataset = pipeline.make_eval_dataset(_EVAL_PATTERN.value, self.size, _BATCH.value)
        except (FileNotFoundError, ValueError) as e:
            raise app.UsageError(str(e))
        bar = keras.utils.Progbar(self.num_images, unit_name="image")
        hist = evaluation_protocol.evaluate(members, dataset, self.model.num_classes,
                                            progress=bar.update, label_table=self.label_table)
        return evaluation_protocol.summarize(hist, self.model.class_names, self.subset)

    def settings(self):
        height, width = self.size
        return {"eval_pattern": _EVAL_PATTERN.value, "eval_size": [width, height],
                "num_classes": self.model.num_classes, "class_subset": _CLASS_SUBSET.value,
                "backbone": self.model.backbone, "multi_level": self.model.multi_level}


def _report(title, summary):
    print(f"\n{title}\n{evaluation_protocol.format_summary(summary)}", flush=True)


def run_single():
    """Scores the --checkpoints or the run's newest (one model or an ensemble)."""
    loaded = model_flags.load_members()
    score = _Scorer(loaded.model, loaded.run_config, _read_manifest())
    summary = score(loaded.members)
    sources = loaded.sources
    weights = [weight for _, weight in loaded.members]
    _report(f"{_EVAL_PATTERN.value}: " + ", ".join(
        f"{source} (x{weight:g})" if len(sources) > 1 else source
        for source, weight in zip(sources, weights)), summary)
    if _OUTPUT_DIR.value:
        results = dict(score.settings(), checkpoints=sources, ensemble_weights=weights,
                       summary=summary)
        sweep.write_json(os.path.join(_OUTPUT_DIR.value, "results.json"), results)
        steps = [segmenter_weights.checkpoint_step(source) for source in sources]
        writer = tf.summary.create_file_writer(os.path.join(_OUTPUT_DIR.value, "tensorboard"))
        step = steps[0] if len(steps) == 1 and steps[0] else 0
        evaluation_protocol.write_scalars(writer, summary, step)
    return summary


def run_best():
    """Scores every checkpoint of --train_dir, resuming from the cache; reports best and last."""
    train_dir = model_flags.TRAIN_DIR.value
    if not train_dir or model_flags.CHECKPOINTS.value:
        raise app.UsageError("--mode=best takes --train_dir and no --checkpoints")
    try:
        checkpoints = segmenter_weights.list_checkpoints(train_dir)
    except FileNotFoundError as e:
        raise app.UsageError(str(e))
    model_cfg, recorded = model_flags.model_config(train_dir)
    score = _Scorer(model_cfg, recorded, _read_manifest())
    output_dir = _OUTPUT_DIR.value or os.path.join(train_dir, "eval")
    try:
        cache = sweep.SweepCache(os.path.join(output_dir, "sweep.json"), score.settings())
    except ValueError as e:
        raise app.UsageError(str(e))
    model = build_segmenter(model_cfg.backbone, model_cfg.num_classes, model_cfg.multi_level)
    writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))

    def score_checkpoint(prefix):
        logging.info("Scoring %s", prefix)
        try:
            segmenter_weights.load_weights(model, prefix)
        except segmenter_weights.DamagedCheckpointError:
            raise  # run_sweep skips this one
        except segmenter_weights.CheckpointError as e:
            # Another network than the flags': every checkpoint would fail.
            raise app.UsageError(str(e))
        return score([(model, 1.0)])

    def on_new_result(step, prefix, summary):
        evaluation_protocol.write_scalars(writer, summary, step)
        print(f"{os.path.basename(prefix)}: mIoU {summary['miou']:.2f}", flush=True)

    unreadable = []

    def on_skipped(step, prefix, error):
        unreadable.append(os.path.basename(prefix))
        logging.warning("Skipped %s: %s", prefix, error)
        print(f"{os.path.basename(prefix)}: skipped, cannot be read", flush=True)

    logging.info("%d checkpoints, %d cached in %s", len(checkpoints),
                 sum(cache.lookup(p) is not None for _, p in checkpoints), cache.path)
    results = sweep.run_sweep(checkpoints, score_checkpoint, cache, on_new_result,
                              skip_errors=segmenter_weights.DamagedCheckpointError,
                              on_skipped=on_skipped)
    if not results:
        raise app.UsageError(f"--train_dir={train_dir}: none of its {len(checkpoints)} "
                             "checkpoints can be read (see the warnings above)")
    best, last = sweep.best_and_last(results)
    _report(f"Best: step {best} (selected on {_EVAL_PATTERN.value} itself)", results[best])
    if best != last:
        _report(f"Last: step {last}", results[last])
    sweep.write_json(os.path.join(output_dir, "results.json"), dict(
        score.settings(), train_dir=train_dir,
        best={"step": best, "summary": results[best]},
        last={"step": last, "summary": results[last]},
        miou_by_step={str(step): results[step]["miou"] for step in sorted(results)},
        unreadable=unreadable))
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure_command(inference=True)  # Before the first tensor.
    if _MODE.value == "best":
        run_best()
    else:
        run_single()


if __name__ == "__main__":
    app.run(main)
