"""Facts of the Fashion-MNIST dataset itself (not tunables): image size, classes, the raw files
and the SHA-256 of each file's decompressed content, the same on every mirror."""

from __future__ import annotations

IMAGE_SIZE = 28  # 28x28 grayscale images
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
# Raw IDX file names (decompressed), by split and kind.
RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where `fetch` looks, in order, unless FASHION_MNIST_MIRRORS lists others (space-separated): the
# directory Debian's `dataset-fashion-mnist` package installs, the mirror Keras uses, Zalando's own.
# Where a file comes from cannot change the data (it must have its SHA-256), so this is not a DVC
# param: `dvc exp show` need not compare it.
MIRRORS = (
    "/usr/share/datasets/fashion-mnist",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
)
# `fetch` accepts a file only when its decompressed bytes have this SHA-256 (the .gz bytes differ
# between mirrors). Changing one reruns `fetch`, since the stage depends on this module.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
