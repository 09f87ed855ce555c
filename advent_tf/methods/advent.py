"""AdvEnt (paper eq. 7-9): adversarial training on weighted self-information maps."""

import tensorflow as tf

from advent_tf.core import constants
from advent_tf.core import losses
from advent_tf.methods import base


class AdvEnt(base.DomainAdaptationModel):
    """Adversarial entropy minimisation, one discriminator per output head.

    One iteration, as `train_advent` of the reference:
      1. discriminators frozen; source forward, backward of L_seg;
      2. target forward; generator loss lambda_adv * BCE(D(I_t), source label)
         (eq. 9), backward through D into F (D's weights are not updated);
      3. once F's gradients exist, each D on the *detached* source maps with
         the source label and on the detached target maps with the target
         label, each loss halved (eq. 8);
      4. one SGD step for F, one Adam step for each D.

    Args:
      segmenter: the DeepLab-V2 network.
      discriminator_main: D for the main head's maps.
      discriminator_aux: D for the auxiliary head's maps (multi-level only).
      **kwargs: `weights`, `class_prior`, `prior_mu`, Keras arguments.
    """

    def __init__(self, segmenter, discriminator_main, discriminator_aux=None, **kwargs):
        super().__init__(segmenter, **kwargs)
        self.discriminator_main = discriminator_main
        self.discriminator_aux = discriminator_aux
        if (discriminator_aux is not None) != self.multi_level:
            raise ValueError("AdvEnt needs discriminator_aux exactly when the segmenter is "
                             "multi-level.")
        heads = ["aux", "main"] if self.multi_level else ["main"]
        self.create_trackers([f"{kind}_{head}" for kind in ("loss_adv", "loss_d", "d_accuracy")
                              for head in heads])

    def compile(self, optimizer, d_optimizer_main, d_optimizer_aux=None, **kwargs):
        """Compiles with the SGD of F and one Adam per discriminator, all built now."""
        super().compile(optimizer, **kwargs)
        self.d_optimizer_main = d_optimizer_main
        self.d_optimizer_main.build(self.discriminator_main.trainable_variables)
        self.d_optimizer_aux = d_optimizer_aux
        if self.discriminator_aux is not None:
            self.d_optimizer_aux.build(self.discriminator_aux.trainable_variables)

    def _heads(self):
        """(name, discriminator, its optimizer, generator loss weight) per output head."""
        w = self.loss_weights_config
        heads = [("main", self.discriminator_main, self.d_optimizer_main, w.adv_main)]
        if self.discriminator_aux is not None:
            heads.insert(0, ("aux", self.discriminator_aux, self.d_optimizer_aux, w.adv_aux))
        return heads

    def train_step(self, data):
        self.begin_step()
        source, labels = data[constants.SOURCE_IMAGE], data[constants.SOURCE_LABEL]
        target = data[constants.TARGET_IMAGE]
        grads, source_logits = self.source_step(source, labels)
        source_logits = dict(zip(("aux", "main"), source_logits))

        def generator_loss():
            """Eq. 9 (+ CP); also returns the target self-information maps for D."""
            probs = dict(zip(("aux", "main"), self.target_probabilities(target)))
            loss = self.class_prior_term(probs["main"])
            target_maps = {}
            for name, disc, _, weight in self._heads():
                target_maps[name] = losses.self_information_map(probs[name])
                adv = losses.adversarial_loss(disc(target_maps[name]),
                                              losses.SOURCE_DOMAIN_LABEL)
                self.log(**{f"loss_adv_{name}": adv})
                loss += weight * adv
            return loss, target_maps

        target_grads, target_maps = self.target_step(generator_loss, after=grads)
        grads = base.add_gradients(grads, target_grads)
        self.apply_segmenter_gradients(grads)

        source_size = tf.shape(source)[1:3]
        # Step 3 waits for F's gradients, as in the reference: the detached
        # source maps exist right after the source forward, and the executor
        # would otherwise run D on them (its forward, and its backward from
        # that half of its loss) during F's passes and hold D's activations
        # on top of F's (AdvEnt at 640x360 + 512x256: ~90 MiB of the peak).
        with base.waiting_for(grads):
            for name, disc, optimizer, _ in self._heads():
                with tf.name_scope(f"discriminator_step_{name}"):
                    source_prob = base.upsampled_probabilities(
                        tf.stop_gradient(source_logits[name]), source_size)
                    self._discriminator_step(name, disc, optimizer,
                                             losses.self_information_map(source_prob),
                                             tf.stop_gradient(target_maps[name]))
        return self.logs()

    def _discriminator_step(self, name, disc, optimizer, source_map, target_map):
        """Eq. 8: D learns source (label 0) vs target (label 1) on detached maps, each loss / 2."""
        with tf.GradientTape() as tape:
            d_source = disc(source_map)
            d_target = disc(target_map)
            loss = 0.5 * (losses.adversarial_loss(d_source, losses.SOURCE_DOMAIN_LABEL)
                          + losses.adversarial_loss(d_target, losses.TARGET_DOMAIN_LABEL))
            scaled = optimizer.scale_loss(loss / base.num_replicas())
        grads = tape.gradient(scaled, disc.trainable_variables)
        optimizer.apply_gradients(zip(grads, disc.trainable_variables))
        # D's logit > 0 means "target": accuracy over both domains' map pixels.
        correct = tf.concat([tf.reshape(tf.cast(d_source < 0, tf.float32), [-1]),
                             tf.reshape(tf.cast(d_target > 0, tf.float32), [-1])], 0)
        self.log(**{f"loss_d_{name}": loss, f"d_accuracy_{name}": tf.reduce_mean(correct)})
