"""Eight Python threads hammer one shared device for a few seconds with random malloc / write / read +
verify / copy / map / free. Copies of at least 64 KiB run without the GIL, so those really overlap
in the runtime. Afterwards: no error in any thread, no corrupted byte, no leaked block, one free block."""

from __future__ import annotations

import random
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

import edgekit as ek

THREADS = 8
SECONDS = 3.0
HEAP = 128 << 20
NOGIL = 64 * 1024  # edgekit._core.NOGIL_THRESHOLD
MAX_LIVE = 4
SHARED_SIZE = 256 * 1024


@dataclass
class Block:
    mem: ek.DeviceMemory
    data: bytearray  # what the device memory must hold


@dataclass
class Tally:
    ops: dict[str, int] = field(default_factory=dict)
    small_copies: int = 0
    large_copies: int = 0

    def count(self, op: str) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1


def random_size(rng: random.Random) -> int:
    return rng.choice([rng.randint(1, 4096), rng.randint(NOGIL, 1 << 20)])


def random_bytes(rng: random.Random, n: int) -> bytearray:
    return bytearray(rng.randbytes(n))


def worker(
    dev: ek.Device,
    seed: int,
    deadline: float,
    shared: Block,
    tally: Tally,
    errors: list[str],
    start: threading.Barrier,
) -> None:
    rng = random.Random(seed)
    live: list[Block] = []
    try:
        start.wait()
        while time.monotonic() < deadline:
            op = rng.choice(
                ["malloc", "malloc", "write", "read", "read", "copy", "copy", "shared", "map", "free"]
            )
            if op == "malloc" or not live:
                if len(live) >= MAX_LIVE:
                    op = "free"
                else:
                    size = random_size(rng)
                    block = Block(dev.malloc(size), random_bytes(rng, size))
                    block.mem.write(block.data)
                    live.append(block)
                    tally.count("malloc")
                    continue
            block = rng.choice(live)
            size = block.mem.size
            if op == "write":
                off = rng.randrange(size)
                chunk = random_bytes(rng, rng.randint(1, size - off))
                block.mem.write(chunk, off)
                block.data[off : off + len(chunk)] = chunk
            elif op == "read":
                if rng.random() < 0.5:
                    got = block.mem.read()
                    assert got == block.data, f"thread {seed}: memory {block.mem.handle:#x} corrupted"
                else:
                    off = rng.randrange(size)
                    n = rng.randint(1, size - off)
                    out = np.empty(n, dtype=np.uint8)
                    block.mem.read(n, off, out)
                    assert out.tobytes() == block.data[off : off + n], (
                        f"thread {seed}: partial read corrupted"
                    )
            elif op == "copy":
                src = rng.choice(live)  # may be `block` itself: an overlapping memmove
                n = rng.randint(1, min(size, src.mem.size))
                doff = rng.randint(0, size - n)
                soff = rng.randint(0, src.mem.size - n)
                dev.copy(block.mem, doff, src.mem, soff, n)
                block.data[doff : doff + n] = src.data[soff : soff + n]  # the slice is a copy: memmove
                if n >= NOGIL:
                    tally.large_copies += 1
                else:
                    tally.small_copies += 1
            elif op == "shared":  # every thread reads and copies from one memory at once
                n = min(size, SHARED_SIZE)
                dev.copy(block.mem, 0, shared.mem, 0, n)
                block.data[:n] = shared.data[:n]
                assert shared.mem.read(64, SHARED_SIZE - 64) == shared.data[-64:]
                if n >= NOGIL:
                    tally.large_copies += 1
                else:
                    tally.small_copies += 1
            elif op == "map":
                view = block.mem.map()
                arr = view.ndarray(np.uint8, size)
                assert arr.tobytes() == block.data, f"thread {seed}: mapping shows corrupted bytes"
                arr[0] ^= 0xFF
                block.data[0] ^= 0xFF
                block.mem.flush(0, 1)
                del arr, view
                block.mem.unmap()
            elif op == "free":
                live.remove(block)
                assert block.mem.read() == block.data, f"thread {seed}: corrupted before free"
                block.mem.free()
            tally.count(op)
    except BaseException:
        errors.append(f"thread {seed}:\n{traceback.format_exc()}")
    finally:
        for block in live:
            try:
                block.mem.free()
            except BaseException:
                errors.append(f"thread {seed} cleanup:\n{traceback.format_exc()}")


def test_eight_threads_share_one_device() -> None:
    with ek.Device(0, heap_size=HEAP) as dev:
        shared_data = bytearray(random.Random(99).randbytes(SHARED_SIZE))
        shared = Block(dev.malloc(SHARED_SIZE), shared_data)
        shared.mem.write(shared.data)
        errors: list[str] = []
        tallies = [Tally() for _ in range(THREADS)]
        start = threading.Barrier(THREADS)
        deadline = time.monotonic() + SECONDS + 0.5  # + the time to start the threads
        threads = [
            threading.Thread(
                target=worker, args=(dev, i, deadline, shared, tallies[i], errors, start), daemon=True
            )
            for i in range(THREADS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SECONDS + 30)
        assert not any(t.is_alive() for t in threads), "a worker thread hangs (deadlock?)"
        assert not errors, "\n".join(errors)

        assert shared.mem.read() == shared.data  # read by everyone, written by no one
        shared.mem.free()

        ops = {
            op: sum(t.ops.get(op, 0) for t in tallies)
            for op in ("malloc", "write", "read", "copy", "map", "free")
        }
        assert all(sum(t.ops.values()) > 50 for t in tallies), [t.ops for t in tallies]
        assert all(n > 0 for n in ops.values()), ops
        assert sum(t.small_copies for t in tallies) > 20
        assert sum(t.large_copies for t in tallies) > 20

        stats = dev.stats
        assert stats["used"] == 0, stats
        assert stats["allocations"] == 0, stats
        assert stats["free"] == stats["total"] == HEAP, stats
        assert stats["largest_free"] == stats["total"], "free blocks did not coalesce back into one"
        assert stats["peak"] > 1 << 20
