"""Captioning: CIDEr-D, BLEU-4 and CLIPScore of generated captions on val images.

The images come from `config.evals.captioning` (`evals.datasets`). On the world each image gets
`eval_config.caption_references` true captions (the world can say many true things about one
scene, `datasets.world_references`); on a stored dataset its one stored caption. CIDEr-D and
BLEU-4 are the COCO toolkit's (see `caption_metrics`), on lower-case words without punctuation.

CLIPScore (Hessel et al., 2021) = 2.5 * max(cos(image, caption), 0) under a contrastive model,
the `judge` Scorer the caller passes: the evaluated model's own towers (CoCa's), or a fixed
model (e.g. a SigLIP run, `eval_config.clipscore_workdir`, which the caller restores), so
captioners are judged by one model. `clipscore_refs` is the same score of the dataset
captions, the reference point (not a ceiling: a judge may prefer a model's captions). A model
with no towers of its own (a VLM on a pretrained LM) and no `clipscore_workdir` judge gets
CIDEr-D and BLEU-4 only.
"""

from __future__ import annotations

import numpy as np

from vlm_jax.evals import caption_metrics, datasets
from vlm_jax.evals.caption_model import CaptionModel, generate_captions
from vlm_jax.evals.scoring import Scorer, cosine_similarity, embed_images, embed_texts

SPLIT = "val"


def check_judge(judge: Scorer | None) -> Scorer:
    """`judge`, if CLIPScore can use it: a Scorer of embedding vectors under the cosine."""
    if judge is None:
        raise ValueError("CLIPScore needs a contrastive judge: evaluate a model that embeds "
                         "(a trainer with the 'scorer' capability), or set "
                         "evals.clipscore_workdir to a two-tower run's workdir.")
    if judge.similarity is not cosine_similarity:
        raise ValueError("CLIPScore is a cosine of embedding vectors; this scorer has its own "
                         "similarity. Set evals.clipscore_workdir to a two-tower run.")
    return judge


def run(model: CaptionModel, judge: Scorer | None, eval_config) -> dict[str, float]:
    """captioning/<split>/{cider, bleu4, clipscore, clipscore_refs} on the first
    `eval_config.captioning_size` images of the `eval_config.captioning` dataset."""
    if judge is not None:
        judge = check_judge(judge)
    spec = datasets.spec_of(eval_config, "captioning")
    ((split, captioned),) = datasets.caption_sets(
        spec, (SPLIT,), eval_config.captioning_size, eval_config.seed, eval_config.image_size,
        references=eval_config.caption_references).items()
    images, references = captioned.images, captioned.references
    captions = generate_captions(model, images, eval_config.batch_size)
    candidate_words = [caption_metrics.caption_words(caption) for caption in captions]
    reference_words = [[caption_metrics.caption_words(ref) for ref in refs] for refs in references]

    prefix = f"captioning/{split}"
    results = {
        f"{prefix}/cider": caption_metrics.corpus_cider_d(candidate_words, reference_words),
        f"{prefix}/bleu4": caption_metrics.corpus_bleu(candidate_words, reference_words),
    }
    if judge is None:
        return results
    image_embeddings = embed_images(judge, images, eval_config.batch_size)
    caption_embeddings = embed_texts(judge, captions, eval_config.batch_size)
    dataset_embeddings = embed_texts(judge, captioned.captions, eval_config.batch_size)
    return {
        **results,
        f"{prefix}/clipscore": float(np.mean(
            caption_metrics.clip_score(image_embeddings, caption_embeddings))),
        f"{prefix}/clipscore_refs": float(np.mean(
            caption_metrics.clip_score(image_embeddings, dataset_embeddings))),
    }
