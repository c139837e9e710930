"""Static memory plan of one stage: every ARENA tensor gets a 64-aligned offset in the stage's arena.

Liveness is an interval of op indices [written by op a, last read by op b]; two tensors whose
intervals overlap (an op's inputs and outputs always do) never share bytes. Offsets are assigned
greedily, largest tensor first, each at the lowest aligned offset that fits between the tensors it
overlaps in time.

A DYNAMIC output (its size depends on the data) is written in the arena too, at its bound, and copied
out after the stage's last op: it lives from its op to the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.compiler.graph import CompileError, Graph

ALIGNMENT = 64


@dataclass
class MemoryPlan:
    offsets: dict[str, int]  # ARENA tensor (and DYNAMIC output) name -> byte offset
    arena_size: int
    sum_intermediate_bytes: int  # what the ARENA tensors would take without sharing


def _align(value: int) -> int:
    return (value + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def plan_memory(graph: Graph) -> MemoryPlan:
    io = set(graph.inputs) | {n for n in graph.outputs if not graph.tensors[n].dynamic}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    end = len(graph.ops)  # after the last op: the copy-out of DYNAMIC outputs
    for index, op in enumerate(graph.ops):
        for name in op.outputs:
            if name in io:
                continue
            if name in first:
                raise CompileError(f"internal: tensor '{name}' is written by two ops")
            first[name] = last[name] = index
            if graph.tensors[name].dynamic:
                last[name] = end
        for used in op.inputs:
            if used is not None and used in first:
                last[used] = max(last[used], index)
    sizes = {name: graph.tensors[name].nbytes for name in first}
    order = sorted(first, key=lambda n: (-sizes[n], first[n], n))
    placed: list[tuple[str, int]] = []
    offsets: dict[str, int] = {}
    for name in order:
        busy = sorted(
            (offset, offset + sizes[other])
            for other, offset in placed
            if first[other] <= last[name] and first[name] <= last[other]
        )
        candidate = 0
        for begin, end in busy:
            if candidate + sizes[name] <= begin:
                break
            candidate = max(candidate, _align(end))
        offsets[name] = candidate
        placed.append((name, candidate))
    arena = max((offsets[n] + sizes[n] for n in offsets), default=0)
    return MemoryPlan(offsets, _align(arena), sum(sizes.values()))
