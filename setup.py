"""Installs advent_tf: ADVENT domain adaptation for semantic segmentation in TF2/Keras 3."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent

setuptools.setup(
    name="advent_tf",
    version="0.1.0",
    description=("ADVENT (CVPR 2019): entropy minimisation and adversarial "
                 "entropy for domain-adaptive semantic segmentation, in TensorFlow/Keras."),
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["advent_tf", "advent_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<4",
        "numpy>=1.26,<3",
        "absl-py>=2.1",
        # Since TF 2.21 the Keras TensorBoard callback needs the package itself.
        "tensorboard>=2.21,<2.22",
        # Decodes the 16-bit SYNTHIA label PNGs and writes prediction PNGs.
        "pillow>=10",
    ],
    extras_require={
        # The checkpoint converter reads official .pth files; the CPU build is enough.
        "convert": ["torch>=2.1,<3"],
        # cityscapesscripts: the label-table test checks our Cityscapes ids against it;
        # pytest-xdist runs the suite on two processes (pytest.ini).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch>=2.1,<3", "cityscapesscripts>=2.2"],
    },
)
