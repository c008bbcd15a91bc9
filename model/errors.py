"""Errors a user can cause. The CLI prints their message as one line and exits non-zero."""


class AmsegError(Exception):
    """Base class for problems with the user's input or settings (never a bug in amseg)."""


class ImageInputError(AmsegError):
    """An image file cannot be used: missing, not an image, truncated, empty or too large."""


class ImageTooLargeError(ImageInputError):
    """The image has more pixels than the limit allows (checked from the header)."""


class ParameterError(AmsegError, ValueError):
    """A setting is out of its range (tile size, overlap, percentiles...)."""


class DatasetError(AmsegError):
    """A dataset directory does not have the expected layout."""


class RegistrationError(AmsegError):
    """The marks cannot be placed on the requested acquisition grid."""
