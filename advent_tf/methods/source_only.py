"""Source-only baseline: the segmenter trained on labelled source images alone."""

from advent_tf.core import constants
from advent_tf.methods import base


class SourceOnly(base.DomainAdaptationModel):
    """One iteration: L_seg on a source batch, one SGD step. Target images unused."""

    def train_step(self, data):
        self.begin_step()
        grads, _ = self.source_step(data[constants.SOURCE_IMAGE], data[constants.SOURCE_LABEL])
        self.apply_segmenter_gradients(grads)
        return self.logs()
