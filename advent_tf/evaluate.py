r"""Scores models on a labelled split as the paper does (per-class IoU and mIoU, %).

One model, or an ensemble (the paper's AdvEnt+MinEnt, 0.5/0.5):

    python -m advent_tf.evaluate \
        --checkpoints=runs/advent/checkpoints/ckpt-120000,runs/minent/checkpoints/ckpt-120000 \
        --ensemble_weights=0.5,0.5 \
        --eval_pattern=data/tfrecords/cityscapes/val-*.tfrecord --output_dir=eval/ensemble

Every checkpoint of a run (the reference's model selection), resumable:

    python -m advent_tf.evaluate --mode=best --train_dir=runs/advent \
        --eval_pattern=data/tfrecords/cityscapes/val-*.tfrecord

Images are resized to --eval_size, the main logits upsampled (align_corners)
to the label resolution, and one confusion matrix is accumulated over the
split. Results: printed tables, `results.json` (and, in best mode, the
per-checkpoint cache `sweep.json`) and TensorBoard scalars under
--output_dir (default for --mode=best: TRAIN_DIR/eval).
"""

import os

import keras
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from advent_tf import checkpoint_io
from advent_tf import evaluation
from advent_tf import model_flags
from advent_tf import sweep
from advent_tf.data import manifest as manifest_lib
from advent_tf.data import pipeline
from advent_tf.models import build_segmenter

_MODE = flags.DEFINE_enum(
    "mode", "single", ["single", "best"],
    "single: the --checkpoints (several = ensemble); best: every checkpoint of --train_dir, "
    "reporting the best and the last.")
_TRAIN_DIR = flags.DEFINE_string("train_dir", None, "The training run (--mode=best).")
_EVAL_PATTERN = flags.DEFINE_string("eval_pattern", None, "Glob of the labelled split's shards.")
_EVAL_SIZE = flags.DEFINE_list("eval_size", ["1024", "512"],
                               "WIDTH,HEIGHT of the network input (reference: 1024,512).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Images per batch.", lower_bound=1)
_CLASS_SUBSET = flags.DEFINE_enum(
    "class_subset", None, ["13"],
    "With --num_classes=16 (SYNTHIA): also report the 13-class mIoU (no wall, fence, pole).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "results.json, sweep.json and tensorboard/ (default in best mode: "
    "TRAIN_DIR/eval; in single mode: print only).")

flags.mark_flag_as_required("eval_pattern")


def _label_setup():
    """(label lookup table or None, number of images or None) from the split's manifest."""
    try:
        manifest = manifest_lib.read_manifest(_EVAL_PATTERN.value)
    except (FileNotFoundError, ValueError) as e:
        logging.warning("%s; assuming its labels have --num_classes classes", e)
        return None, None
    try:
        table = evaluation.label_mapping(manifest["num_classes"], model_flags.num_classes())
    except ValueError as e:
        raise app.UsageError(f"{_EVAL_PATTERN.value}: {e}")
    return table, manifest["num_examples"]


def _scorer(label_table, num_images):
    """callable(members) -> `evaluation.summarize` result, with a progress bar."""
    size = model_flags.parse_size(_EVAL_SIZE.value, "eval_size")
    subset = None if _CLASS_SUBSET.value is None else int(_CLASS_SUBSET.value)
    if subset is not None and model_flags.num_classes() != 16:
        raise app.UsageError("--class_subset=13 needs --num_classes=16")

    def score(members):
        try:
            dataset = pipeline.make_eval_dataset(_EVAL_PATTERN.value, size, _BATCH.value)
        except (FileNotFoundError, ValueError) as e:
            raise app.UsageError(str(e))
        bar = keras.utils.Progbar(num_images, unit_name="image")
        hist = evaluation.evaluate(members, dataset, model_flags.num_classes(),
                                   progress=bar.update, label_table=label_table)
        return evaluation.summarize(hist, subset)

    return score


def _settings():
    height, width = model_flags.parse_size(_EVAL_SIZE.value, "eval_size")
    return {"eval_pattern": _EVAL_PATTERN.value, "eval_size": [width, height],
            "num_classes": model_flags.num_classes(), "class_subset": _CLASS_SUBSET.value,
            "backbone": model_flags.BACKBONE.value, "multi_level": model_flags.MULTI_LEVEL.value}


def _report(title, summary):
    print(f"\n{title}\n{evaluation.format_summary(summary)}", flush=True)


def run_single(score):
    """Scores the --checkpoints (one model or an ensemble)."""
    members, sources = model_flags.load_members()
    summary = score(members)
    weights = [weight for _, weight in members]
    _report(f"{_EVAL_PATTERN.value}: " + ", ".join(
        f"{source} (x{weight:g})" if len(sources) > 1 else source
        for source, weight in zip(sources, weights)), summary)
    if _OUTPUT_DIR.value:
        results = dict(_settings(), checkpoints=sources, ensemble_weights=weights,
                       summary=summary)
        sweep.write_json(os.path.join(_OUTPUT_DIR.value, "results.json"), results)
        steps = [checkpoint_io.checkpoint_step(source) for source in sources]
        writer = tf.summary.create_file_writer(os.path.join(_OUTPUT_DIR.value, "tensorboard"))
        evaluation.write_scalars(writer, summary, steps[0] if len(steps) == 1 and steps[0] else 0)
    return summary


def run_best(score):
    """Scores every checkpoint of --train_dir, resuming from the cache; reports best and last."""
    if not _TRAIN_DIR.value or model_flags.CHECKPOINTS.value:
        raise app.UsageError("--mode=best takes --train_dir and no --checkpoints")
    try:
        checkpoints = checkpoint_io.list_checkpoints(_TRAIN_DIR.value)
    except FileNotFoundError as e:
        raise app.UsageError(str(e))
    output_dir = _OUTPUT_DIR.value or os.path.join(_TRAIN_DIR.value, "eval")
    try:
        cache = sweep.SweepCache(os.path.join(output_dir, "sweep.json"), _settings())
    except ValueError as e:
        raise app.UsageError(str(e))
    model = build_segmenter(model_flags.BACKBONE.value, model_flags.num_classes(),
                            model_flags.MULTI_LEVEL.value)
    writer = tf.summary.create_file_writer(os.path.join(output_dir, "tensorboard"))

    def score_checkpoint(prefix):
        logging.info("Scoring %s", prefix)
        try:
            checkpoint_io.load_weights(model, prefix)
        except checkpoint_io.DamagedCheckpointError:
            raise  # run_sweep skips this one
        except checkpoint_io.CheckpointError as e:
            # Another network than the flags': every checkpoint would fail.
            raise app.UsageError(str(e))
        return score([(model, 1.0)])

    def on_new_result(step, prefix, summary):
        evaluation.write_scalars(writer, summary, step)
        print(f"{os.path.basename(prefix)}: mIoU {summary['miou']:.2f}", flush=True)

    unreadable = []

    def on_skipped(step, prefix, error):
        unreadable.append(os.path.basename(prefix))
        logging.warning("Skipped %s: %s", prefix, error)
        print(f"{os.path.basename(prefix)}: skipped, cannot be read", flush=True)

    logging.info("%d checkpoints, %d cached in %s", len(checkpoints),
                 sum(cache.lookup(p) is not None for _, p in checkpoints), cache.path)
    results = sweep.run_sweep(checkpoints, score_checkpoint, cache, on_new_result,
                              skip_errors=checkpoint_io.DamagedCheckpointError,
                              on_skipped=on_skipped)
    if not results:
        raise app.UsageError(f"--train_dir={_TRAIN_DIR.value}: none of its {len(checkpoints)} "
                             "checkpoints can be read (see the warnings above)")
    best, last = sweep.best_and_last(results)
    _report(f"Best: step {best} (selected on {_EVAL_PATTERN.value} itself)", results[best])
    if best != last:
        _report(f"Last: step {last}", results[last])
    sweep.write_json(os.path.join(output_dir, "results.json"), dict(
        _settings(), train_dir=_TRAIN_DIR.value,
        best={"step": best, "summary": results[best]},
        last={"step": last, "summary": results[last]},
        miou_by_step={str(step): results[step]["miou"] for step in sorted(results)},
        unreadable=unreadable))
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    score = _scorer(*_label_setup())
    if _MODE.value == "best":
        run_best(score)
    else:
        run_single(score)


if __name__ == "__main__":
    app.run(main)
