"""EdgeKit: deploy models to edge SoCs. This package is the Python API of the libedgekit runtime.

import edgekit as ek
with ek.Device(0) as dev, dev.malloc(4096) as mem:
    mem.write(b"...")
with ek.Context(device=0) as ctx:
    outputs = ctx.load_model("model.ekm").network().create_request().run([x])
"""

from edgekit._core import version as runtime_version
from edgekit.device import CoherenceViolation, Device, DeviceMemory, MappedView, device_count
from edgekit.errors import (
    BusyError,
    ConnectionLostError,
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
    VersionMismatchError,
    WaitTimeoutError,
)
from edgekit.inference import (
    Allocator,
    Context,
    Model,
    Network,
    PoolAllocator,
    Profile,
    ProfileRecord,
    Request,
    Stage,
    StageMemory,
    TensorInfo,
)

__version__ = runtime_version()

__all__ = [
    "Allocator",
    "BusyError",
    "CoherenceViolation",
    "ConnectionLostError",
    "Context",
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
    "Model",
    "ModelInvalidError",
    "Network",
    "NoDeviceError",
    "NotMappedError",
    "OutOfMemoryError",
    "OutOfRangeError",
    "PoolAllocator",
    "Profile",
    "ProfileRecord",
    "Request",
    "Stage",
    "StageMemory",
    "SystemCallError",
    "TensorInfo",
    "UnsupportedError",
    "VersionMismatchError",
    "WaitTimeoutError",
    "__version__",
    "device_count",
    "runtime_version",
]
