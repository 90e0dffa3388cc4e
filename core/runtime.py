"""TensorFlow process settings for one trial or one training run."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def quiet_tensorflow() -> None:
    """Hides TensorFlow's C++ start-up chatter unless the user set a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_tensorflow(threads: int | None, *, memory_growth: bool = True) -> None:
    """Matches TensorFlow's thread pools to the CPUs this process was given.

    Must run before TensorFlow executes its first op in the process; if it is
    too late, the existing settings are kept and a debug line says so.

    Args:
        threads: CPUs reserved for this process (None keeps TensorFlow's
            default of every core, which oversubscribes when trials share a node).
        memory_growth: Let each visible GPU's memory grow on demand instead of
            one process taking it all, so that trials can share a GPU.
    """
    quiet_tensorflow()
    import tensorflow as tf

    if threads is not None and threads >= 1:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
        except RuntimeError as error:
            logger.debug("TensorFlow threads already fixed: %s", error)
    if memory_growth:
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError as error:
                logger.debug("GPU memory growth already fixed: %s", error)
