"""Captioning: CIDEr-D, BLEU-4 and CLIPScore of generated captions on val images.

References: the world can say many true things about one scene, so each image gets
`eval_config.caption_references` true captions, `World.caption(scene, index + r * len(split))`
for r = 0, 1, ... (r = 0 is the dataset's own caption; each index draws its own template and
word order). CIDEr-D and BLEU-4 are the COCO toolkit's (see `caption_metrics`), on lower-case
words without punctuation.

CLIPScore (Hessel et al., 2021) = 2.5 * max(cos(image, caption), 0) under a contrastive model:
by default the `scorer` the evals get (for CoCa, its own contrastive towers); with
`eval_config.clipscore_workdir` set, the model trained in that workdir (e.g. a SigLIP run), so
captioners are judged by one fixed model. `clipscore_refs` is the same score of the dataset
captions, the reference point (not a ceiling: a judge may prefer a model's captions).
"""

from __future__ import annotations

import numpy as np

from vlm_jax.data import world
from vlm_jax.evals import caption_metrics
from vlm_jax.evals.caption_model import CaptionModel, generate_captions
from vlm_jax.evals.scoring import Scorer, cosine_similarity, embed_images, embed_texts

SPLIT = "val"


def reference_captions(split_world: world.World, index: int, count: int) -> list[str]:
    """`count` true captions of example `index` (the first is the dataset's own)."""
    scene = split_world.scene(index)
    return [split_world.caption(scene, index + r * len(split_world)) for r in range(count)]


def clipscore_scorer(scorer: Scorer | None, eval_config) -> Scorer:
    """The contrastive model CLIPScore uses: eval_config.clipscore_workdir's, else `scorer`."""
    workdir = eval_config.get("clipscore_workdir", "")
    if workdir:
        from vlm_jax import restore  # imported here: restoring needs the training stack

        scorer = restore.restore_run(workdir).scorer()
    if scorer is None:
        raise ValueError("CLIPScore needs a contrastive model: pass a scorer, or set "
                         "eval_config.clipscore_workdir to a two-tower run's workdir.")
    if scorer.similarity is not cosine_similarity:
        raise ValueError("CLIPScore is a cosine of embedding vectors; this scorer has its own "
                         "similarity. Set eval_config.clipscore_workdir to a two-tower run.")
    return scorer


def run(model: CaptionModel, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """captioning/val/{cider, bleu4, clipscore, clipscore_refs} on the first
    `eval_config.captioning_size` val images."""
    split_world = world.World(SPLIT, seed=eval_config.seed, image_size=eval_config.image_size)
    size = eval_config.captioning_size
    images = np.stack([split_world[index]["image"] for index in range(size)])
    references = [reference_captions(split_world, index, eval_config.caption_references)
                  for index in range(size)]
    captions = generate_captions(model, images, eval_config.batch_size)
    candidate_words = [caption_metrics.caption_words(caption) for caption in captions]
    reference_words = [[caption_metrics.caption_words(ref) for ref in refs] for refs in references]

    judge = clipscore_scorer(scorer, eval_config)
    image_embeddings = embed_images(judge, images, eval_config.batch_size)
    caption_embeddings = embed_texts(judge, captions, eval_config.batch_size)
    dataset_embeddings = embed_texts(judge, [refs[0] for refs in references],
                                     eval_config.batch_size)
    prefix = f"captioning/{SPLIT}"
    return {
        f"{prefix}/cider": caption_metrics.corpus_cider_d(candidate_words, reference_words),
        f"{prefix}/bleu4": caption_metrics.corpus_bleu(candidate_words, reference_words),
        f"{prefix}/clipscore": float(np.mean(
            caption_metrics.clip_score(image_embeddings, caption_embeddings))),
        f"{prefix}/clipscore_refs": float(np.mean(
            caption_metrics.clip_score(image_embeddings, dataset_embeddings))),
    }
