"""The emulated board's instruction counter (edgekit_packaging.icount, its qemu TCG plugin) and the
aarch64 instruction benchmark built on it (edgekit_packaging.bench_board): exact, linear counts of a
tiny aarch64 program, one thread and several, marks, a refused argument, one short benchmark row."""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgekit_packaging import bench_board, icount

# A static aarch64 program: THREADS threads (0: the main thread) each run a 2-instruction loop
# (subs + b.ne) ITERS times, between two marks. Everything but the loops is the same for any ITERS.
SPIN = r"""
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static long iters;

static void spin(long n)
{
    __asm__ volatile("1: subs %0, %0, #1\n\tb.ne 1b" : "+r"(n) : : "cc");
}

static void *worker(void *arg)
{
    (void)arg;
    spin(iters);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) return 2;
    int threads = atoi(argv[1]);
    iters = atol(argv[2]);
    pthread_t t[16];
    if (iters < 1 || threads < 0 || threads > 16) return 2;
    lseek(-1, MARK, SEEK_SET);
    if (threads == 0) {
        spin(iters);
    }
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    lseek(-1, MARK, SEEK_SET);
    return 0;
}
"""
BOARD = "/run/edgekit-icount-test"


@pytest.fixture(scope="module")
def spin_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SPIN built for aarch64 (Debian's cross gcc, static: no board libraries involved)."""
    folder = tmp_path_factory.mktemp("icount")
    source = folder / "spin.c"
    source.write_text(SPIN)
    command = ["aarch64-linux-gnu-gcc", "-O2", "-static", "-pthread", f"-DMARK={icount.MARK:#x}L"]
    subprocess.run([*command, "-o", str(folder / "spin"), str(source)], check=True)
    return folder


def count(rootfs: Path, folder: Path, threads: int, iters: int) -> icount.Counts:
    counts, _ = icount.count_on_board(
        rootfs, [f"{BOARD}/spin", str(threads), str(iters)], binds=[(folder, BOARD)], timeout=300
    )
    return counts


def region(counts: icount.Counts) -> int:
    assert len(counts.marks) == 2, counts
    return counts.marks[1] - counts.marks[0]


def test_one_thread_counts_grow_exactly_with_the_loop_and_repeat(
    emu_rootfs: Path, spin_program: Path
) -> None:
    n = random.Random(13).randrange(100_000, 1_000_000)
    once = count(emu_rootfs, spin_program, 0, n)
    again = count(emu_rootfs, spin_program, 0, n)
    twice = count(emu_rootfs, spin_program, 0, 2 * n)
    assert once == again  # total and marks, to the instruction
    assert twice.total - once.total == 2 * n
    assert region(twice) - region(once) == 2 * n
    assert 2 * n <= region(once) < 2 * n + 200  # the loop and the lseek around it, no more


def test_threads_are_all_counted_and_stable(emu_rootfs: Path, spin_program: Path) -> None:
    """Guest threads run in parallel as separate vCPUs: a count lost to a race would show here."""
    threads, n = 4, random.Random(14).randrange(200_000, 1_000_000)
    first = count(emu_rootfs, spin_program, threads, n)
    second = count(emu_rootfs, spin_program, threads, n)
    doubled = count(emu_rootfs, spin_program, threads, 2 * n)
    loops = threads * 2 * n
    # Thread start-up and joins (futex waits) may differ by a few hundred instructions, no more.
    assert abs(first.total - second.total) < 2_000, (first, second)
    assert abs((doubled.total - first.total) - loops) < 2_000, (first, doubled)
    assert loops <= region(first) < loops + 200_000


def test_a_bad_plugin_argument_is_refused_clearly(emu_rootfs: Path, spin_program: Path) -> None:
    with pytest.raises(icount.IcountError, match=r"could not load.*\n.*unknown argument colour=blue"):
        icount.count_on_board(
            emu_rootfs,
            [f"{BOARD}/spin", "0", "10"],
            binds=[(spin_program, BOARD)],
            plugin_args=["colour=blue"],
        )
    with pytest.raises(icount.IcountError, match="empty outfile= path"):
        icount.count_on_board(
            emu_rootfs, [f"{BOARD}/spin", "0", "10"], binds=[(spin_program, BOARD)], plugin_args=["outfile="]
        )


def test_the_plugin_is_rebuilt_when_its_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "icount_plugin.c"
    source.write_bytes(icount.SOURCE.read_bytes())
    monkeypatch.setattr(icount, "SOURCE", source)
    first = icount.build_plugin(tmp_path)
    assert icount.build_plugin(tmp_path) == first
    source.write_text(source.read_text() + "\n/* changed */\n")
    second = icount.build_plugin(tmp_path)
    assert second != first and second.is_file() and not first.exists()
    source.write_text(source.read_text() + "\n#error broken on purpose\n")
    with pytest.raises(icount.IcountError, match="broken on purpose"):
        icount.build_plugin(tmp_path)


def test_counts_file_lines_are_parsed_or_refused() -> None:
    assert icount.parse_counts("12 100\n13 mark 40\n13 mark 90\n13 7\n") == icount.Counts(107, (40, 90))
    with pytest.raises(icount.IcountError, match="unexpected line"):
        icount.parse_counts("12 100 extra\n")


def test_board_bench_counts_the_mlp_with_edgekit(
    flashed_emu: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """One row of invoke bench --board emu, end to end: export, compile, the board, the check."""
    code = bench_board.main(["--models", "mlp", "--engines", "edgekit-portable", "--runs", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    row = re.search(r"^mlp\s+1x64\s+edgekit-portable\s+([\d.]+)\s+([\d.]+)\s+-\s+([\d.e+-]+)$", out, re.M)
    assert row, out
    per_inference, startup, error = (float(value) for value in row.groups())
    assert 0.001 < per_inference < 50 and startup > per_inference  # millions of instructions
    assert error < 1e-4


def test_qemu_args_reach_proot_as_one_word_list(emu_rootfs: Path) -> None:
    from toolchains.rootfs import board_command

    command = board_command(emu_rootfs, ["true"], runner="proot", qemu_args=["-plugin", "/x.so,outfile=/o"])
    assert command[command.index("-q") + 1].endswith("qemu-aarch64 -plugin /x.so,outfile=/o")
    with pytest.raises(ValueError, match="without whitespace"):
        board_command(emu_rootfs, ["true"], runner="proot", qemu_args=["-plugin", "/a b.so"])
