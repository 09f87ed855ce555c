"""MinEnt (paper eq. 4), with the optional entropy ranking (ER) and class-ratio prior (CP)."""

from advent_tf.core import constants
from advent_tf.core import losses
from advent_tf.methods import base


class MinEnt(base.DomainAdaptationModel):
    """Direct entropy minimisation on the target domain.

    One iteration, as `train_minent` of the reference: source forward and
    backward of L_seg; target forward and backward of
    lambda_ent_main * L_ent(main) + lambda_ent_aux * L_ent(aux) (+ lambda_cp * L_cp);
    one SGD step on the summed gradients.

    Args:
      segmenter: the DeepLab-V2 network.
      entropy_top_fraction: None for plain MinEnt (eq. 3 over all pixels); a
        fraction in (0, 1] for MinEnt+ER, which keeps only that fraction of the
        highest-entropy target pixels of each sample (0.3 in the paper).
      **kwargs: `weights`, `class_prior`, `prior_mu`, Keras arguments.
    """

    def __init__(self, segmenter, entropy_top_fraction=None, **kwargs):
        super().__init__(segmenter, **kwargs)
        self.entropy_top_fraction = entropy_top_fraction
        self.create_trackers(["loss_ent_main"] + (["loss_ent_aux"] if self.multi_level else []))

    def _entropy(self, prob):
        if self.entropy_top_fraction is None:
            return losses.entropy_loss(prob)
        return losses.ranked_entropy_loss(prob, self.entropy_top_fraction)

    def train_step(self, data):
        self.begin_step()
        w = self.loss_weights_config
        grads, _ = self.source_step(data[constants.SOURCE_IMAGE], data[constants.SOURCE_LABEL])

        def target_loss():
            prob_aux, prob_main = self.target_probabilities(data[constants.TARGET_IMAGE])
            loss_main = self._entropy(prob_main)
            loss = w.ent_main * loss_main
            self.log(loss_ent_main=loss_main)
            if prob_aux is not None:
                loss_aux = self._entropy(prob_aux)
                loss += w.ent_aux * loss_aux
                self.log(loss_ent_aux=loss_aux)
            return loss + self.class_prior_term(prob_main), None

        target_grads, _ = self.target_step(target_loss, after=grads)
        grads = base.add_gradients(grads, target_grads)
        self.apply_segmenter_gradients(grads)
        return self.logs()
