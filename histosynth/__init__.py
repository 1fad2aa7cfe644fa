"""histosynth: train, rate and evaluate generative models of histology.

The core package holds only what the three apps share: the pool format, image I/O,
the study configuration and the command line. `trainer`, `evaluator` and `rater_app`
import from here and never from each other.
"""

from histosynth.errors import ConfigError, HistosynthError, ImageError, PoolError, StudyError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "HistosynthError",
    "ImageError",
    "PoolError",
    "StudyError",
    "__version__",
]
