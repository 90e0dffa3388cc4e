"""Saving, loading, evaluating and predicting with a trained bottletune model.

A trained model is a directory holding ``model.keras`` (RGB images in [0, 255]
in, class probabilities out; preprocessing included) and ``model_info.json``
(class names, image size and how the data was split).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data import DataError, DatasetIndex, load_image, load_images, scan_dataset
from core.records import from_dict, to_dict

INFO_FILE = "model_info.json"


@dataclass(frozen=True)
class ModelInfo:
    """``model_info.json``: what a saved model needs beside its weights to be used."""

    class_names: tuple[str, ...]
    image_size: int
    backbone: str
    validation_fraction: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ModelInfo:
        return from_dict(cls, data, source)

    @classmethod
    def read(cls, path: Path) -> ModelInfo:
        try:
            return cls.from_dict(json.loads(path.read_text()), str(path))
        except (OSError, ValueError) as error:
            raise DataError(
                f"{path}: not a readable bottletune model info file ({error})"
            ) from error

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def load_model(model_path: str | os.PathLike[str]) -> tuple[Any, ModelInfo]:
    """Loads ``model.keras`` and the ``model_info.json`` beside it."""
    import keras

    import core.layers  # noqa: F401  registers BackbonePreprocess for deserialization

    path = Path(model_path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file")
    info = ModelInfo.read(path.parent / INFO_FILE)
    model = keras.models.load_model(path)  # safe_mode stays on: no lambdas are loaded
    return model, info


def probabilities(model: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities, shape (N, num_classes), for uint8 images."""
    output = model.predict(images.astype("float32"), batch_size=batch_size, verbose=0)
    output = np.asarray(output, dtype="float64")
    if output.shape[-1] == 1:
        positive = output[:, 0]
        return np.stack([1.0 - positive, positive], axis=1)
    return output


def evaluate(
    model_path: str | os.PathLike[str], data_dir: str | os.PathLike[str], split: str | None = None
) -> dict[str, Any]:
    """Accuracy of a saved model on one split of a dataset.

    Args:
        model_path: Path of ``model.keras``.
        data_dir: Dataset directory.
        split: "train", "validation" or "test"; default: test if the data has
            a test split, else validation.

    Returns:
        split, accuracy, count (images evaluated) and skipped (unreadable).
    """
    model, info = load_model(model_path)
    index = scan_dataset(data_dir, info.validation_fraction, info.seed)
    chosen = split or ("test" if "test" in index.splits else "validation")
    return split_accuracy(model, info, index, chosen)


def split_accuracy(model: Any, info: ModelInfo, index: DatasetIndex, split: str) -> dict[str, Any]:
    """Accuracy of a loaded model on one split of a scanned dataset.

    Returns:
        split, accuracy, count (images evaluated) and skipped (unreadable).
    """
    if index.class_names != info.class_names:
        raise DataError(
            f"{index.root}: classes {list(index.class_names)} differ from the model's "
            f"{list(info.class_names)}"
        )
    if split not in index.splits:
        raise DataError(f"{index.root}: no {split!r} split (has {', '.join(index.splits)})")
    loaded = load_images(index.splits[split], info.image_size)
    predicted = probabilities(model, loaded.images).argmax(axis=1)
    return {
        "split": split,
        "accuracy": float(np.mean(predicted == loaded.labels)),
        "count": len(loaded.labels),
        "skipped": len(loaded.skipped),
    }


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one image file.

    Attributes:
        path: The image file, as given.
        label: The predicted class.
        probability: The model's probability for ``label``.
        true_label: The class the image's folder names, when that folder is
            one of the model's classes (the Keras layout); None otherwise.
    """

    path: str
    label: str
    probability: float
    true_label: str | None = None


def folder_class(path: str | os.PathLike[str], class_names: Sequence[str]) -> str | None:
    """The class an image's parent folder names, or None if it names none of ``class_names``."""
    # abspath, not resolve: a linked file still belongs to the folder it was listed in.
    folder = Path(os.path.abspath(path)).parent.name
    return folder if folder in class_names else None


def predict(
    model_path: str | os.PathLike[str], image_paths: Sequence[str | os.PathLike[str]]
) -> list[Prediction]:
    """Predicted class and its probability for each image file.

    An image inside a folder named after one of the model's classes (as in
    ``test/circle/001.png``) also gets that class as its ``true_label``.
    """
    model, info = load_model(model_path)
    images = np.stack([load_image(path, info.image_size) for path in image_paths])
    probs = probabilities(model, images)
    best = probs.argmax(axis=1)
    return [
        Prediction(
            path=str(path),
            label=info.class_names[int(label)],
            probability=float(probs[row, label]),
            true_label=folder_class(path, info.class_names),
        )
        for row, (path, label) in enumerate(zip(image_paths, best, strict=True))
    ]
