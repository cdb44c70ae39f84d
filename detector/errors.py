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


class DegenerateImageError(InputError):
    """An image the model cannot see (it would resize below one pixel on a side); a run skips
    it by name and goes on."""


class BoxShapeError(InputError):
    """An op got boxes (or scores) of the wrong shape; the message names the op and the shape."""


class NonFiniteLossError(DetectorError):
    """A loss became NaN or infinite; the message names the iteration, the losses and the images."""


class DataError(DetectorError, ValueError):
    """A dataset cannot be read; the message names the file (and line, annotation or image)."""


class ImageFileError(DataError):
    """An image file (or upload) is missing, empty, not an image or cut short; `reason` says
    which, without the name, so that callers can phrase it their way."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class ImageTooLargeError(ImageFileError):
    """An image declares more pixels than the limit (a decompression bomb, or a photo larger than
    a server accepts); found from its header, before any decoder allocates it."""


class DatasetError(DataError):
    """A data set is unknown, not installed, or fails its checks; the message says what to run."""


class DownloadError(DataError):
    """A download failed, stopped early or does not match its recorded checksum."""


class WeightsNotFoundError(DetectorError, FileNotFoundError):
    """Pretrained weights were asked for, but their file is not on this machine."""


class AnalysisError(DetectorError, ValueError):
    """Analysis inputs are wrong; the message names the file, image or category at fault."""


class ExportError(DetectorError, ValueError):
    """A model or setting cannot be exported (or run) as asked; the message names the key or file."""


class SourceError(DetectorError):
    """A prediction source cannot be predicted (with `strict`); the message names it and why."""


class UploadError(InputError):
    """An upload the server refuses; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
