"""What one device of a compiled XLA program does, read from its HLO text: matmul FLOPs, collective traffic and
the kernels it calls.

Why our own count: XLA's `cost_analysis()` counts a while loop's body once, so the train step of a model whose
48 layers run under `lax.scan` (and whose micro-batches and loss chunks are scans too) would read as a fraction of
its work. Here every instruction is weighted by how many times it runs: the product of the known trip counts of
the loops around it (XLA records them on each `while` as `known_trip_count`). A loop whose length depends on data (the blockwise
attention's walk over the live KV tiles of a query tile, the MoE's loop over the row tiles that hold tokens) runs
as many times as the caller estimates: `loop_trips` maps a name scope in the loop's op_name to its trip count.

The GPU compiler's forms are read too: dots inside Triton GEMM fusions (counted through the fusion's call like
any other), cuBLAS GEMM custom calls (`__cublas$gemm`, `__cublas$lt$matmul`: their dot dimensions are in the
backend config), async collectives (a `-start`/`-done` pair, often several tensors combined in one: counted once,
from the done's results and the start's operands), and kernels whose work the HLO does not show, estimated from
their operands: cuDNN fused attention and the Pallas-Triton flash attention (`KERNEL_MATMULS`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "ragged-all-to-all",
               "collective-permute")

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"([a-z]\w*)\[([\d,]*)\]")
_CALLS = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_TRITON_NAME = re.compile(r'\bname = "([^"]+)"')
_FUSION_KIND = re.compile(r'"kind":"(__[a-z_]+)"')
GEMM_CALLS = ("__cublas$gemm", "__cublas$lt$matmul")
TRITON_CALL = "__gpu$xla.gpu.triton"
# Kernels that hide their matmuls: the (B, T, H, hd)-sized products each runs, causal (half the score matrix, as
# ssd-jax calls them): the forward computes S = QKᵀ and PV; the backward recomputes S and computes dP, dV, dQ, dK.
KERNEL_MATMULS = {"__cudnn$fmhaSoftmax": 2, "__cudnn$fmhaSoftmaxBackward": 5, "triton:mha_forward": 2,
                  "triton:mha_backward": 5}


@dataclass
class Instruction:
    name: str
    op: str
    shapes: list[tuple[str, tuple[int, ...]]]  # result arrays (a tuple result is flattened)
    operands: list[str]
    attrs: str

    def nbytes(self) -> float:
        return sum(_bytes(s) for s in self.shapes)


@dataclass
class CollectiveTotals:
    count: float = 0.0  # executions per step
    payload_bytes: float = 0.0  # size of the exchanged buffers
    traffic_bytes: float = 0.0  # bytes one device sends (ring model): what the links must carry


@dataclass
class ProgramStats:
    flops: float = 0.0  # dot FLOPs per device per call (2·M·N·K), every loop iteration counted
    unknown_loops: dict[str, int] = field(default_factory=dict)  # loops of data-dependent length, by scope
    collectives: dict[str, CollectiveTotals] = field(default_factory=dict)
    kernels: dict[str, float] = field(default_factory=dict)  # custom calls by `kernel_name`: executions per call
    kernel_flops: float = 0.0  # the part of `flops` estimated for kernels that hide their matmuls
    fusions: dict[str, float] = field(default_factory=dict)  # GPU fusion kinds (Triton GEMM, ...): executions

    @property
    def traffic_bytes(self) -> float:
        return sum(c.traffic_bytes for c in self.collectives.values())


def _bytes(shape: tuple[str, tuple[int, ...]]) -> float:
    dtype, dims = shape
    return DTYPE_BYTES.get(dtype, 4) * math.prod(dims)


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis that closes the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text) - 1


def _shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _ARRAY.findall(text)
            if dt in DTYPE_BYTES]


def parse_instruction(line: str) -> Instruction | None:
    m = _INSTR.match(line)
    if not m:
        return None
    name, rest = m.group(1), m.group(2)
    if rest.startswith("("):
        end = _closing(rest, 0)
        shape_text, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        shape_text, _, rest = rest.partition(" ")
    om = re.match(r"([\w\-]+)\(", rest)
    if not om:
        return None
    close = _closing(rest, om.end() - 1)
    operands = re.findall(r"%([\w.\-]+)", rest[om.end():close])
    return Instruction(name, om.group(1), _shapes(shape_text), operands, rest[close + 1:])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], list[str], str]:
    """(computations by name, their order in the text, the entry's name)."""
    comps: dict[str, list[Instruction]] = {}
    order: list[str] = []
    entry, current = "", None
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h:
            current = h.group(2)
            comps[current], entry = [], (current if h.group(1) else entry)
            order.append(current)
            continue
        if line.strip() == "}":
            current = None
            continue
        if current is not None:
            ins = parse_instruction(line)
            if ins is not None:
                comps[current].append(ins)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, order, entry


def _scope(ins: Instruction, loop_trips: dict[str, float]) -> str:
    op_name = re.search(r'op_name="([^"]*)"', ins.attrs)
    return next((k for k in loop_trips if op_name and k in op_name.group(1)), "")


def _callees(ins: Instruction, loop_trips: dict[str, float]) -> list[tuple[str, float]]:
    trip = _TRIP.search(ins.attrs)
    loop_times = float(trip.group(1)) if trip else loop_trips.get(_scope(ins, loop_trips), 1.0)
    out = []
    for kind, name in _CALLS.findall(ins.attrs):
        out.append((name, loop_times if ins.op == "while" and kind in ("body", "condition") else 1.0))
    for group in _BRANCHES.findall(ins.attrs):
        out += [(n.strip().lstrip("%"), 1.0) for n in group.split(",") if n.strip()]
    return out


def multiplicities(comps: dict[str, list[Instruction]], order: list[str], entry: str,
                   loop_trips: dict[str, float] | None = None) -> dict[str, float]:
    """Executions of each computation per call of the entry (callees precede callers in HLO text); a loop without
    a known trip count runs `loop_trips[scope]` times, or once when no scope of `loop_trips` names it."""
    loop_trips = loop_trips or {}
    mult = {name: 0.0 for name in comps}
    mult[entry] = 1.0
    for name in reversed(order):
        if mult[name] == 0.0:
            continue
        for ins in comps[name]:
            for callee, times in _callees(ins, loop_trips):
                if callee in mult:
                    mult[callee] += mult[name] * times
    return mult


def _group_size(attrs: str, n_devices: int) -> int:
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if m:
        return max(1, len([x for x in m.group(1).split(",") if x]))
    return n_devices


def dot_flops(ins: Instruction, symbols: dict[str, Instruction]) -> float:
    """2·|out|·K of a dot, or of a cuBLAS GEMM custom call (its contracting dims are in the backend config)."""
    lhs = symbols.get(ins.operands[0]) if ins.operands else None
    m = re.search(r'lhs_contracting_dim(?:s=\{|ensions":\[)([\d,"]*)[}\]]', ins.attrs)
    if lhs is None or not lhs.shapes or not ins.shapes:
        return 0.0
    dims = lhs.shapes[0][1]
    k = math.prod(dims[int(i)] for i in m.group(1).replace('"', "").split(",") if i) if m else 1
    return 2.0 * math.prod(ins.shapes[0][1]) * k


def kernel_name(ins: Instruction) -> str | None:
    """The name a custom call is listed under: its target, or `triton:<kernel>` for a Pallas/Triton kernel."""
    target = _TARGET.search(ins.attrs)
    if target is None:
        return None
    if target.group(1) == TRITON_CALL:
        name = _TRITON_NAME.search(ins.attrs)
        return f"triton:{name.group(1) if name else 'unnamed'}"
    return target.group(1)


def _kernel_flops(name: str, ins: Instruction, symbols: dict[str, Instruction]) -> float:
    """Estimated FLOPs of an attention kernel from its query operand (B, T, H, hd) (`KERNEL_MATMULS`)."""
    q = symbols.get(ins.operands[0]) if ins.operands else None
    if name not in KERNEL_MATMULS or q is None or not q.shapes or len(q.shapes[0][1]) != 4:
        return 0.0
    b, t, h, hd = q.shapes[0][1]
    return KERNEL_MATMULS[name] * 2.0 * b * h * t * t * hd / 2


def _collective(ins: Instruction, symbols: dict[str, Instruction], n_devices: int) -> tuple[str, float, float]:
    """(kind, payload, traffic) of a synchronous collective or of the `-done` of an async one (results: the done's
    shapes; inputs: its start's operands)."""
    kind = ins.op.removesuffix("-done")
    out = ins.nbytes()
    source = (symbols.get(ins.operands[0]) if ins.op.endswith("-done") and ins.operands else None) or ins
    n = _group_size(source.attrs, n_devices)  # an async pair's groups are on its start
    inp = sum(symbols[o].nbytes() for o in source.operands if o in symbols)
    frac = (n - 1) / n if n > 1 else 0.0
    if kind == "all-gather":
        return kind, out, out * frac
    if kind == "reduce-scatter":
        return kind, inp, inp * frac
    if kind == "all-reduce":
        return kind, out, 2 * out * frac
    if kind == "ragged-all-to-all":  # the routed rows move: at most the smaller of the send and receive buffers
        first = symbols.get(source.operands[0]) if source.operands else None
        return kind, out, min(out, first.nbytes() if first else out) * frac
    if kind == "all-to-all":
        return kind, out, out * frac
    return kind, out, out  # collective-permute: every byte leaves the device


def program_stats(text: str, n_devices: int, loop_trips: dict[str, float] | None = None) -> ProgramStats:
    """Dot FLOPs, collective traffic and kernels per device per call of a compiled (SPMD-partitioned) HLO module."""
    loop_trips = loop_trips or {}
    comps, order, entry = parse_module(text)
    mult = multiplicities(comps, order, entry, loop_trips)
    stats = ProgramStats()
    for name, instrs in comps.items():
        times = mult[name]
        if times == 0.0:
            continue
        symbols = {i.name: i for i in instrs}
        for ins in instrs:
            if ins.op == "while" and not _TRIP.search(ins.attrs):
                scope = _scope(ins, loop_trips) or "unnamed"
                stats.unknown_loops[scope] = stats.unknown_loops.get(scope, 0) + 1
            if ins.op == "dot":
                stats.flops += times * dot_flops(ins, symbols)
            elif ins.op == "custom-call":
                kernel = kernel_name(ins)
                stats.kernels[kernel] = stats.kernels.get(kernel, 0.0) + times
                if kernel in GEMM_CALLS:
                    stats.flops += times * dot_flops(ins, symbols)
                else:
                    flops = times * _kernel_flops(kernel, ins, symbols)
                    stats.flops += flops
                    stats.kernel_flops += flops
            elif ins.op == "fusion" and (kind := _FUSION_KIND.search(ins.attrs)):
                stats.fusions[kind.group(1)] = stats.fusions.get(kind.group(1), 0.0) + times
            elif ins.op.removesuffix("-done") in COLLECTIVES and not ins.op.endswith("-start"):
                kind, payload, traffic = _collective(ins, symbols, n_devices)
                c = stats.collectives.setdefault(kind, CollectiveTotals())
                c.count += times
                c.payload_bytes += times * payload
                c.traffic_bytes += times * traffic
    return stats
