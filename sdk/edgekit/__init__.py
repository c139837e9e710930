"""EdgeKit: deploy models to edge SoCs. This package is the Python API of the libedgekit runtime.

import edgekit as ek
with ek.Device(0) as dev, dev.malloc(4096) as mem:
    mem.write(b"...")
"""

from edgekit._core import version as runtime_version
from edgekit.device import CoherenceViolation, Device, DeviceMemory, MappedView, device_count
from edgekit.errors import (
    BusyError,
    DeviceMismatchError,
    DoubleFreeError,
    EdgeKitError,
    FreedHandleError,
    InternalError,
    InvalidArgumentError,
    InvalidHandleError,
    InvalidTypeError,
    ModelInvalidError,
    NoDeviceError,
    NotMappedError,
    OutOfMemoryError,
    OutOfRangeError,
    SystemCallError,
    UnsupportedError,
    WaitTimeoutError,
)

__version__ = runtime_version()

__all__ = [
    "BusyError",
    "CoherenceViolation",
    "Device",
    "DeviceMemory",
    "DeviceMismatchError",
    "DoubleFreeError",
    "EdgeKitError",
    "FreedHandleError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidHandleError",
    "InvalidTypeError",
    "MappedView",
    "ModelInvalidError",
    "NoDeviceError",
    "NotMappedError",
    "OutOfMemoryError",
    "OutOfRangeError",
    "SystemCallError",
    "UnsupportedError",
    "WaitTimeoutError",
    "__version__",
    "device_count",
    "runtime_version",
]
