"""The shared exception tree; stages translate library errors into these at their boundary."""


class BemsError(Exception):
    """Base of every error bems raises on purpose."""


class ConfigError(BemsError):
    """A configuration file or setting is invalid; the message names the file, the key and the fix."""


class PayloadError(BemsError):
    """A wire payload failed validation; the message is the reason that goes to the dead-letter log."""


class StoreError(BemsError):
    """The time-series store failed; ``retryable`` tells the caller whether to keep the batch and retry."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
