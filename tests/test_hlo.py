"""The HLO reader counts every execution of a dot and a collective, where XLA's cost_analysis counts a loop once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ssd_jax import hlo
from ssd_jax.sharding import MeshConfig, make_mesh

W = jax.ShapeDtypeStruct((10, 64, 64), jnp.float32)
X = jax.ShapeDtypeStruct((32, 64), jnp.float32)
ONE_DOT = 2 * 32 * 64 * 64


def scanned(w, x):
    return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0].sum()


@pytest.mark.parametrize("fn,dots", [(scanned, 10), (jax.grad(scanned), 30)])
def test_dots_in_a_scan_count_once_per_iteration(fn, dots):
    compiled = jax.jit(fn).lower(W, X).compile()
    assert hlo.program_stats(compiled.as_text(), 1).flops == dots * ONE_DOT
    # What the reader fixes: XLA counts the loop body once.
    assert compiled.cost_analysis()["flops"] < 2 * ONE_DOT * dots / 10


def test_nested_loops_multiply_and_data_dependent_loops_use_the_estimate():
    def f(w, x, n):
        def outer(h, _):
            with jax.named_scope("my_loop"):
                return jax.lax.fori_loop(0, n, lambda i, h: h @ w, h), None  # n is traced: no known trip count
        return jax.lax.scan(outer, x, None, length=3)[0].sum()

    w, n = jax.ShapeDtypeStruct((64, 64), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32)
    text = jax.jit(f).lower(w, X, n).compile().as_text()
    one = hlo.program_stats(text, 1)
    assert one.unknown_loops == {"unnamed": 1} and one.flops == 3 * ONE_DOT
    five = hlo.program_stats(text, 1, loop_trips={"my_loop": 5, "elsewhere": 7})
    assert five.unknown_loops == {"my_loop": 1} and five.flops == 15 * ONE_DOT


def test_collective_traffic_of_a_sharded_matmul():
    """x sharded on rows over 8 devices, w on columns: XLA all-gathers one operand; its traffic is (n−1)/n of the
    gathered bytes per device, and a psum is an all-reduce of 2(n−1)/n."""
    mesh = make_mesh(MeshConfig(fsdp=8))
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
    w = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=NamedSharding(mesh, P(None, "fsdp")))
    text = jax.jit(lambda x, w: x @ w, out_shardings=NamedSharding(mesh, P("fsdp", None))).lower(x, w).compile().as_text()
    stats = hlo.program_stats(text, 8)
    ag = stats.collectives["all-gather"]
    assert ag.count == 1 and ag.payload_bytes == 256 * 128 * 4
    assert ag.traffic_bytes == pytest.approx(256 * 128 * 4 * 7 / 8)
    assert stats.flops == 2 * 8 * 128 * 256  # each device: its 8 rows × the whole w

    red = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "fsdp"), mesh=mesh, in_specs=P("fsdp"), out_specs=P()))
    text = red.lower(jax.ShapeDtypeStruct((8 * 1024,), jnp.float32)).compile().as_text()
    ar = hlo.program_stats(text, 8).collectives["all-reduce"]
    assert ar.count == 1 and ar.traffic_bytes == pytest.approx(2 * 1024 * 4 * 7 / 8)


def test_parse_instruction_shapes_and_operands():
    ins = hlo.parse_instruction('  ROOT %t = (f32[2,3]{1,0}, bf16[4]{0}) tuple(%a, %b.1), metadata={op_name="x"}')
    assert ins.name == "t" and ins.op == "tuple" and ins.operands == ["a", "b.1"]
    assert ins.shapes == [("f32", (2, 3)), ("bf16", (4,))] and ins.nbytes() == 2 * 3 * 4 + 4 * 2
    assert np.isclose(hlo.program_stats("ENTRY %m (p: f32[2]) -> f32[2] {\n  ROOT %p = f32[2]{0} parameter(0)\n}\n",
                                        1).flops, 0.0)


def test_cublas_gemm_custom_call_counts_its_dot():
    """XLA:GPU may run a GEMM as a cuBLAS custom call (its result a tuple with the workspace); its FLOPs come from
    the dot dimensions in its backend config. (The compiles in tests/test_gpu_target.py chose Triton fusions.)"""
    text = """HloModule m, entry_computation_layout={(f32[64,32]{1,0}, f32[32,16]{1,0})->f32[64,16]{1,0}}

ENTRY %main (a: f32[64,32], b: f32[32,16]) -> f32[64,16] {
  %a = f32[64,32]{1,0} parameter(0)
  %b = f32[32,16]{1,0} parameter(1)
  %gemm = (f32[64,16]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"alpha_real":1,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  ROOT %out = f32[64,16]{1,0} get-tuple-element(%gemm), index=0
}
"""
    stats = hlo.program_stats(text, 1)
    assert stats.flops == 2 * 64 * 16 * 32 and stats.kernels == {"__cublas$gemm": 1.0} and stats.kernel_flops == 0
