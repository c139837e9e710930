"""A tour of the EdgeKit memory API: python -m edgekit.examples.memory_demo

1. Allocate device memory, write and read it back.
2. Map it and fill it through a zero-copy numpy view, then copy device-to-device.
3. Run the same code on a strict-coherence device (an emulated non-coherent SoC): forgetting the
   flush gives the device stale data, and the checker says where.
Exits non-zero if any result is wrong, so it doubles as a smoke test on a board.
"""

from __future__ import annotations

import sys

import numpy as np

import edgekit as ek


def fill_and_copy(dev: ek.Device, values: np.ndarray, flush: bool) -> np.ndarray:
    """Fill a buffer on the CPU through the mapping, copy it on the device, return what arrived."""
    nbytes = values.nbytes
    with dev.malloc(nbytes) as src, dev.malloc(nbytes) as dst:
        src.write(np.zeros_like(values))  # what the device holds before the CPU writes
        view = src.map()
        arr = view.ndarray(values.dtype, values.shape)
        arr[:] = values  # written by the CPU, straight into the mapping
        if flush:
            src.flush()  # make the CPU writes visible to the device
        dev.copy(dst, 0, src, 0, nbytes)  # device-side copy: sees only what was flushed
        del arr
        src.unmap()
        return np.frombuffer(dst.read(), dtype=values.dtype)


def main() -> int:
    print(f"EdgeKit {ek.__version__}: {ek.device_count()} device(s)")
    expected = np.arange(1, 1025, dtype=np.float32)
    ok = True
    with ek.Device(0) as dev:
        print(f"  {dev!r}")
        with dev.malloc(16) as mem:
            mem.write(b"hello, device!!!")
            print(f"  write/read round trip: {mem.read()!r}")
            ok &= mem.read() == b"hello, device!!!"
        got = fill_and_copy(dev, expected, flush=True)
        print(f"  coherent: mapped fill + device copy correct: {np.array_equal(got, expected)}")
        ok &= np.array_equal(got, expected)

    with ek.Device(0, coherence="strict") as dev:
        got = fill_and_copy(dev, expected, flush=True)
        correct = np.array_equal(got, expected)
        print(f"  strict, with flush: correct: {correct}; violations: {len(dev.coherence_report())}")
        ok &= correct and not dev.coherence_report()
        got = fill_and_copy(dev, expected, flush=False)
        stale = not np.array_equal(got, expected)
        report = dev.coherence_report(clear=True)
        print(f"  strict, flush forgotten: device saw stale data: {stale}; the checker reports:")
        for violation in report:
            print(
                f"    {violation.kind} at bytes [{violation.offset}, {violation.offset + violation.nbytes}): "
                f"{violation.message}"
            )
        ok &= stale and any(v.kind == "unflushed_read" for v in report)
    print("memory demo:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
