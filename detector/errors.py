"""The package's own error types: every message names the file, image, box or key at fault."""


class DetectorError(Exception):
    """Base class of every error raised on purpose by `detector`."""


class ConfigError(DetectorError, ValueError):
    """A config file or override is wrong; the message names the file and the dotted key."""


class TargetError(DetectorError, ValueError):
    """A training target (boxes / labels) is malformed; the message names the image and the box."""


class CheckpointError(DetectorError, ValueError):
    """A weights file cannot be used; the message names the file and why."""


class InputError(DetectorError, ValueError, TypeError):
    """An argument given to a model, an op or a drawing function is malformed (a tensor of the
    wrong shape or dtype, an unknown option); the message names the image, argument or option."""


class EvaluationError(DetectorError, ValueError):
    """Ground truth or predictions handed to the evaluator disagree; the message names the image."""


class MissingDependencyError(DetectorError, ImportError):
    """An optional package is needed for this feature; the message names the `pip install` to run."""


class KernelError(DetectorError, RuntimeError):
    """A GPU kernel cannot run on these inputs or this machine; the message says what would."""


class AugmentationError(DetectorError, RuntimeError):
    """The augmentation pipeline failed on an image (a bug, not bad data: never skipped);
    the message names the image file."""


class WriteError(DetectorError, OSError):
    """An output file could not be written; the message names it."""
