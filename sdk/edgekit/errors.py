"""EdgeKit's exceptions: one class per C status code, each carrying the code and the runtime's message.

The classes also derive from the closest built-in exception, so ``except ValueError`` or
``except MemoryError`` keep working in code that does not know EdgeKit.
"""

from __future__ import annotations


class EdgeKitError(Exception):
    """A call into the EdgeKit runtime failed. ``code`` is the ``ek_status_t`` value."""

    code: int = -1
    status_name: str = "EK_ERR_UNKNOWN"

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.message} [{self.status_name}]"


class InvalidArgumentError(EdgeKitError, ValueError):
    code, status_name = 1, "EK_ERR_INVALID_ARG"


class InvalidTypeError(InvalidArgumentError, TypeError):
    """An argument of the wrong Python type (still EK_ERR_INVALID_ARG, and a TypeError)."""


class InvalidHandleError(EdgeKitError, ValueError):
    code, status_name = 2, "EK_ERR_INVALID_HANDLE"


class FreedHandleError(EdgeKitError):
    code, status_name = 3, "EK_ERR_FREED_HANDLE"


class DoubleFreeError(EdgeKitError):
    code, status_name = 4, "EK_ERR_DOUBLE_FREE"


class OutOfMemoryError(EdgeKitError, MemoryError):
    code, status_name = 5, "EK_ERR_OUT_OF_MEMORY"


class OutOfRangeError(EdgeKitError, IndexError):
    code, status_name = 6, "EK_ERR_OUT_OF_RANGE"


class DeviceMismatchError(EdgeKitError, ValueError):
    code, status_name = 7, "EK_ERR_DEVICE_MISMATCH"


class NoDeviceError(EdgeKitError, LookupError):
    code, status_name = 8, "EK_ERR_NO_DEVICE"


class NotMappedError(EdgeKitError):
    code, status_name = 9, "EK_ERR_NOT_MAPPED"


class BusyError(EdgeKitError):
    code, status_name = 10, "EK_ERR_BUSY"


class SystemCallError(EdgeKitError, OSError):
    code, status_name = 11, "EK_ERR_SYSTEM"


class UnsupportedError(EdgeKitError, NotImplementedError):
    code, status_name = 12, "EK_ERR_UNSUPPORTED"


class WaitTimeoutError(EdgeKitError, TimeoutError):
    code, status_name = 13, "EK_ERR_TIMEOUT"


class ModelInvalidError(EdgeKitError, ValueError):
    code, status_name = 14, "EK_ERR_MODEL_INVALID"


class InternalError(EdgeKitError):
    code, status_name = 15, "EK_ERR_INTERNAL"


class ConnectionLostError(EdgeKitError, ConnectionError):
    """A remote device could not be reached, its connection was lost, or a peer broke the protocol."""

    code, status_name = 16, "EK_ERR_CONNECTION"


class VersionMismatchError(EdgeKitError):
    """The host and the board's remote_server speak different protocol versions; the message says
    which side to upgrade."""

    code, status_name = 17, "EK_ERR_VERSION"


ERROR_CLASSES: dict[int, type[EdgeKitError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        InvalidHandleError,
        FreedHandleError,
        DoubleFreeError,
        OutOfMemoryError,
        OutOfRangeError,
        DeviceMismatchError,
        NoDeviceError,
        NotMappedError,
        BusyError,
        SystemCallError,
        UnsupportedError,
        WaitTimeoutError,
        ModelInvalidError,
        InternalError,
        ConnectionLostError,
        VersionMismatchError,
    )
}


def error_for_status(code: int, message: str) -> EdgeKitError:
    """The exception for a C status code (an unknown code gives a plain EdgeKitError)."""
    cls = ERROR_CLASSES.get(code)
    return cls(message) if cls else EdgeKitError(message, code)
