"""advent_tf: ADVENT (Vu et al., CVPR 2019) in TensorFlow 2 / Keras 3.

Unsupervised domain adaptation for semantic segmentation by entropy
minimisation (MinEnt) and adversarial training on weighted self-information
maps (AdvEnt).
"""

__version__ = "0.1.0"
