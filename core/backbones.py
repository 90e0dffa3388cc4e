"""Registry of named backbones and where their blocks end.

Each backbone declares the layer that ends each of its blocks, from the input
side up. "Unfreeze the top k blocks" then means the same for every backbone: the
trainable part starts right after the end of block ``num_blocks - k``, and the
cached features a trial starts from are that layer's output (the "cut").

The registry is plain data; TensorFlow/Keras is imported only when a backbone is
built.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

INPUT_CUT = "input"
"""Cut name for "no frozen layers at all": the cached tensor is the preprocessed image."""


class BackboneError(ValueError):
    """An unknown backbone, an unusable image size, or weights that cannot be loaded."""


@dataclass(frozen=True)
class BackboneSpec:
    """A keras.applications model and the layers that end its blocks.

    Attributes:
        name: Registry name, e.g. "vgg16".
        application: Attribute of ``keras.applications`` that builds it.
        preprocess_module: Module of ``keras.applications`` whose
            ``preprocess_input`` matches the model.
        block_ends: Layer names ending each block, bottom to top.
        min_image_size: Smallest square input the model accepts.
        imagenet_weights_file: File name Keras downloads for include_top=False,
            quoted in the error message when it cannot be downloaded.
    """

    name: str
    application: str
    preprocess_module: str
    block_ends: tuple[str, ...]
    min_image_size: int
    imagenet_weights_file: str

    @property
    def num_blocks(self) -> int:
        return len(self.block_ends)

    def cut_for(self, unfreeze_blocks: int) -> str:
        """Name of the layer whose output a trial with ``unfreeze_blocks`` starts from.

        Args:
            unfreeze_blocks: How many top blocks are trained (0 .. num_blocks).

        Returns:
            A layer name from ``block_ends``, or ``INPUT_CUT`` when every block
            is unfrozen.
        """
        if not 0 <= unfreeze_blocks <= self.num_blocks:
            raise BackboneError(
                f"unfreeze_blocks={unfreeze_blocks}: backbone {self.name!r} has "
                f"{self.num_blocks} blocks"
            )
        index = self.num_blocks - unfreeze_blocks
        return INPUT_CUT if index == 0 else self.block_ends[index - 1]

    def cuts_for(self, depths: Iterable[int]) -> list[str]:
        """The cuts trials with these ``unfreeze_blocks`` values need, without repeats.

        The top block's output always (every head trains on it in phase 1),
        plus the cut below the unfrozen blocks for each depth above 0.
        """
        cuts = [self.top_cut] + [self.cut_for(k) for k in depths if k > 0]
        return list(dict.fromkeys(cuts))

    @property
    def top_cut(self) -> str:
        """The last block's output: the classic bottleneck features."""
        return self.block_ends[-1]

    def preprocess_input(self) -> Callable[[Any], Any]:
        import keras

        module = getattr(keras.applications, self.preprocess_module)
        return module.preprocess_input


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        name="vgg16",
        application="VGG16",
        preprocess_module="vgg16",
        block_ends=("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"),
        min_image_size=32,
        imagenet_weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    # MobileNet v1 is, like VGG16, a plain chain of layers. Its blocks are its
    # five resolution stages (each ends where the next stride-2 stage starts).
    "mobilenet": BackboneSpec(
        name="mobilenet",
        application="MobileNet",
        preprocess_module="mobilenet",
        block_ends=(
            "conv_pw_1_relu",
            "conv_pw_3_relu",
            "conv_pw_5_relu",
            "conv_pw_11_relu",
            "conv_pw_13_relu",
        ),
        min_image_size=32,
        imagenet_weights_file="mobilenet_1_0_224_tf_no_top.h5",
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    """Looks a backbone up by name.

    Raises:
        BackboneError: naming the unknown backbone and the valid names.
    """
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(
            f"backbone={name!r} is not known; choose one of: {', '.join(sorted(BACKBONES))}"
        ) from None


def weights_identity(weights: str, seed: int) -> str:
    """A stable identity for a weights choice, used in feature-cache keys.

    "imagenet" is the published file; a path is identified by its content hash;
    "none" (random init) is deterministic given ``seed``.
    """
    if weights == "imagenet":
        return "imagenet"
    if weights == "none":
        # Random init depends on Keras' initializers, which may change between
        # releases: features cached under another version must not be reused.
        return f"none-seed{seed}-keras{_keras_version()}"
    path = Path(weights)
    if not path.is_file():
        raise BackboneError(
            f"weights={weights!r}: expected 'imagenet', 'none' or the path of an existing "
            "weights file"
        )
    stat = path.stat()
    return f"file-{_file_digest(path.resolve(), stat.st_size, stat.st_mtime_ns)[:16]}"


@functools.lru_cache(maxsize=16)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime as well, so a rewritten file is hashed again;
    # a search asks for the identity of one (large) weights file several times.
    del size, mtime_ns
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _keras_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keras")
    except PackageNotFoundError:
        return "unknown"


def build_backbone(name: str, weights: str, image_size: int, seed: int = 0) -> keras.Model:
    """Builds a backbone without its classifier top.

    Args:
        name: Registry name.
        weights: "imagenet" (Keras downloads and caches the file), "none"
            (random init, deterministic for ``seed``) or a path to a weights
            file of the same architecture without its top.
        image_size: Side of the square RGB input.
        seed: Seed of the random init when ``weights`` is "none".

    Raises:
        BackboneError: the size is too small, the file is missing, or ImageNet
            weights cannot be obtained (the message says how to supply them).
    """
    import keras

    spec = get_backbone(name)
    if image_size < spec.min_image_size:
        raise BackboneError(
            f"image_size={image_size}: backbone {name!r} needs at least {spec.min_image_size} px"
        )
    factory = getattr(keras.applications, spec.application)
    shape = (image_size, image_size, 3)
    if weights == "none":
        # Random init must be identical in every process (the feature cache was
        # computed by one process and trials rebuild the same layers).
        keras.utils.set_random_seed(seed)
        return factory(weights=None, include_top=False, input_shape=shape)
    if weights == "imagenet":
        try:
            return factory(weights="imagenet", include_top=False, input_shape=shape)
        except Exception as error:  # Keras raises a bare Exception on download failure.
            keras_home = os.environ.get("KERAS_HOME", str(Path.home() / ".keras"))
            raise BackboneError(
                f"could not obtain ImageNet weights for {name!r} ({error}). Without network "
                f"access, download {spec.imagenet_weights_file} elsewhere and either pass "
                f"weights=/path/to/{spec.imagenet_weights_file} or place it in "
                f"{keras_home}/models/"
            ) from error
    path = Path(weights)
    if not path.is_file():
        raise BackboneError(f"weights={weights!r}: no such weights file")
    try:
        return factory(weights=str(path), include_top=False, input_shape=shape)
    except Exception as error:
        raise BackboneError(
            f"weights file {path} does not fit backbone {name!r} without its top "
            f"(include_top=False) at {image_size} px: {error}"
        ) from error


def split_layers(model: keras.Model, cut: str) -> tuple[list[Any], list[Any]]:
    """Splits a chain backbone into the layers up to ``cut`` and those above it.

    Both registered backbones are plain chains (each layer feeds only the next),
    so the two lists can be re-applied in order to any tensor.

    Args:
        model: A model built by ``build_backbone``.
        cut: A block end or ``INPUT_CUT``.

    Returns:
        (frozen_prefix, trainable_suffix), input layer excluded.
    """
    layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
    if cut == INPUT_CUT:
        return [], layers
    names = [layer.name for layer in layers]
    if cut not in names:
        raise BackboneError(f"cut {cut!r} is not a layer of {model.name!r}")
    index = names.index(cut) + 1
    return layers[:index], layers[index:]


def apply_layers(layers: list[Any], tensor: Any) -> Any:
    """Calls ``layers`` one after another on ``tensor`` (a chain)."""
    for layer in layers:
        tensor = layer(tensor)
    return tensor
