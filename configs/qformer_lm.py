"""What BLIP-2 stage 2 (configs/blip2.py:stage=2) and MiniGPT-4 (configs/minigpt4.py) share: a
prefix_vlm model with the "qformer" connector over BLIP-2 stage 1's image tower and Q-Former,
and the `init_from` entries that load those two from a stage-1 workdir.

The stage-1 Q-Former also holds text parts (word and position tables, the text FFNs) that the
queries-only Q-Former of stage 2 lacks; init_from's map entries must match subtree for subtree,
so the Q-Former is loaded part by part: the queries, the embedding LayerNorm and, per layer,
self-attention, cross-attention (every `cross_attention_frequency`-th layer) and the query FFN.
"""

from __future__ import annotations

import ml_collections

from configs import backbone_lm, common
from vlm_jax.models import sizes

_QUERY_PARTS = ("self_attention", "self_attention_norm", "mlp_query", "mlp_query_norm")
_CROSS_PARTS = ("cross_attention", "cross_attention_norm")


def image_section(tiny: bool, variant: str) -> ml_collections.ConfigDict:
    """BLIP-2 stage 1's image tower (the SigLIP tiny tower at `:tiny`)."""
    if tiny:
        return common.tiny_tower(patch_size=8, pool="map")
    return common.tower(variant, patch_size=0, pool="map")


def qformer_section(tiny: bool) -> ml_collections.ConfigDict:
    """BLIP-2 stage 1's Q-Former sizes: BERT-base with 32 queries, or 2 tiny layers with 8."""
    if tiny:
        return common.tiny_tower(depth=2, max_len=32, num_queries=8, cross_attention_frequency=2,
                                 ln_eps=1e-12, activation="gelu_exact")
    return common.tower("B", max_len=64, num_queries=32, cross_attention_frequency=2,
                        ln_eps=1e-12, activation="gelu_exact")


def model_section(arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.model`: image tower -> Q-Former (queries only) -> linear projector -> the LM."""
    return ml_collections.ConfigDict(dict(
        name="prefix_vlm", execution=common.execution(), connector="qformer",
        image=image_section(arg.tiny, arg.variant), qformer=qformer_section(arg.tiny),
        lm=backbone_lm.lm_section(arg.smollm2)))


def stage1_entries(source: str, qformer: ml_collections.ConfigDict) -> dict[str, str]:
    """{model prefix: source} loading a BLIP-2 stage-1 workdir's image tower and the parts of
    its Q-Former that read the queries ({} without a source)."""
    if not source:
        return {}
    entries = {"image_tower": source, "qformer/query_tokens": source,
               "qformer/embedding_norm": source}
    for i in range(sizes.tower_kwargs(qformer)["depth"]):  # a variant's depth too
        parts = _QUERY_PARTS + (_CROSS_PARTS if i % qformer.cross_attention_frequency == 0
                                else ())
        entries.update({f"qformer/layer{i}/{part}": source for part in parts})
    return entries


def init_from(stage1: str, qformer: ml_collections.ConfigDict, lm: str) -> str:
    """`config.init_from`: the stage-1 parts and the LM ("" when neither is given)."""
    entries = {**stage1_entries(stage1, qformer), **({"lm": lm} if lm else {})}
    return str(entries) if entries else ""
