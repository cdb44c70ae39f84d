"""The package's own error types: every message names the file, image, box or key at fault."""


class DetectorError(Exception):
    """Base class of every error raised on purpose by `detector`."""


class ConfigError(DetectorError, ValueError):
    """A config file or override is wrong; the message names the file and the dotted key."""


class TargetError(DetectorError, ValueError):
    """A training target (boxes / labels) is malformed; the message names the image and the box."""


class CheckpointError(DetectorError, ValueError):
    """A weights file cannot be used; the message names the file and why."""
