"""cpu_peer's profile buckets: op names from a compiled CLIP tiny step land where they belong."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import cpu_peer  # noqa: E402

STACK = "jit(train_step)/jvp(TwoTower)/TwoTower.encode_text/text_tower/encoder/block3"


def test_op_categories_follow_the_name_stack_and_the_fused_op():
    matmul = cpu_peer.op_category(f"{STACK}/mlp/Dense_0/dot_general",
                                  "ynn_fusion.307 = f32[6144,512]{1,0} fusion(...)")
    assert matmul.startswith("matmuls")
    attention = cpu_peer.op_category(f"{STACK}/attn/vmap()/div", "divide_fusion.3 = fusion()")
    assert attention.startswith("attention")
    assert cpu_peer.op_category(f"{STACK}/norm1/LayerNorm_0/mul", "fusion.1 = f32[]").startswith(
        "layer norms")
    assert cpu_peer.op_category(f"{STACK}/mlp/tanh", "multiply_tanh_fusion.1 = f32[]").startswith(
        "elementwise")
    assert cpu_peer.op_category("jit(train_step)/jvp()/reduce_max", "r = f32[]").startswith("loss")
    optimizer = cpu_peer.op_category("jit(train_step)/jit(tree_bias_correction)/div", "d = f32[]")
    assert optimizer.startswith("optimizer")


def test_markdown_table_rows_line_up_with_the_header():
    table = cpu_peer.markdown_table(["a", "b"], [["x", 1.23456], ["y", 2.0]])
    assert table.splitlines() == ["| a | b |", "| --- | --- |", "| x | 1.23 |", "| y | 2 |"]


def test_step_breakdown_splits_parts_and_kinds_of_ops():
    cores = os.sched_getaffinity(0)
    import cpu_step_breakdown as breakdown

    assert os.sched_getaffinity(0) == cores  # importing it pins nothing: its main() does
    part = breakdown.part_and_kind
    for projection in ("attn/dot_general", "attn/attn.keys_values/dot_general",
                       "attn/attn._attend/out/dot_general"):
        assert part(f"{STACK}/{projection}", "ynn_fusion.3 = f32[]"
                    ) == "attention projections: library op (YNNPACK fusion, Eigen dot)"
    assert part(f"{STACK}/attn/reshape", "transpose_copy_fusion.4 = f32[256,4,32,24]") == (
        "attention core: layout copy")  # q, k, v into heads-major order
    assert part(f"{STACK}/attn/attn._attend/vmap(BNTS,BSNH->BTNH)/transpose",
                "copy_bitcast_fusion.8 = f32[128,6144]") == "attention core: layout copy"
    assert part(f"{STACK}/mlp/Dense_1/transpose", "dot.163 = f32[512,128]") == (
        "MLP: library op (YNNPACK fusion, Eigen dot)")
    assert part(f"{STACK}/mlp/tanh", "multiply_tanh_fusion.1 = f32[]") == (
        "MLP: loop (elementwise, reductions)")
    assert part(f"{STACK}/norm2/LayerNorm_0/add_any", "copy_bitcast_fusion.21 = f32[]") == (
        "layer norms: layout copy")
    assert part("jit(train_step)/jit(tree_bias_correction)/div", "d = f32[]").startswith("loss")
