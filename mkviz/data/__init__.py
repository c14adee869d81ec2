"""Layer 2, data: datasets, one module per dataset, the registry that builds them by name, and what they share.
Imports core.

    common          Sample, collate, splits, argument checks (every dataset)
    shapes          the procedural spatial-relation "shapes" dataset, with ground-truth masks
    digits          sklearn's 8x8 handwritten digits, upsampled, with ink masks
    fashion_mnist   Fashion-MNIST from Debian's dataset-fashion-mnist (or a folder of IDX files)
    scenes          multi-object Fashion-MNIST scenes: boxes, instance and semantic masks (detection, segmentation)
    registry        build_dataset(name, split, ...) and data_config: CIFAR-10/100, ImageFolder and the above

The names below are the public API of `mkviz.data` (as before the package was split).
"""
from .common import (DIFFICULTIES, IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, Sample, SPLITS,
                     collate, default_data_root)
from .digits import DigitsDataset
from .fashion_mnist import (FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_SYSTEM_DIR,
                            FashionMNISTDataset, load_fashion_mnist)
from .registry import DATASET_NAMES, DENSE_DATASETS, IN_MEMORY_DATASETS, LabeledSubset, build_dataset, data_config
from .scenes import SCENE_CLASSES, SCENE_SIZES, FashionScenesDataset, Scene, collate_scenes
from .shapes import CLASS_NAMES, MAX_OBJECTS, SHAPE_KINDS, ShapesDataset, make_shapes_splits

__all__ = [
    "Sample", "ShapesDataset", "DigitsDataset", "LabeledSubset", "make_shapes_splits", "build_dataset", "collate",
    "default_data_root", "CLASS_NAMES", "SHAPE_KINDS", "DIFFICULTIES", "SPLITS", "DATASET_NAMES", "MAX_OBJECTS",
    "IMAGENET_MEAN", "IMAGENET_STD", "IN_MEMORY_DATASETS", "FashionMNISTDataset", "load_fashion_mnist",
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_SYSTEM_DIR", "data_config",
    "MIN_IMAGE_SIZE", "MAX_IMAGE_SIZE", "FashionScenesDataset", "Scene", "SCENE_CLASSES", "SCENE_SIZES",
    "collate_scenes", "DENSE_DATASETS",
]
