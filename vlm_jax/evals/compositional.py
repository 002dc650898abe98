"""Compositional probes (relation, attribute binding, count), scored Winoground-style and as
ARO-style 2-way accuracy, with a blind text-only baseline beside them.

A probe pair is two images and two captions, caption i true of image i and false of the
other. With s[i, j] = similarity(image i, caption j):
  text  score: s[0,0] > s[0,1] and s[1,1] > s[1,0]   (each image picks its caption)
  image score: s[0,0] > s[1,0] and s[1,1] > s[0,1]   (each caption picks its image)
  group score: both
  acc2: per image, the true caption strictly beats the negative, averaged over both images.
Every inequality is strict, so a tie is never correct.

`run` scores with a Scorer's similarity of embeddings; `run_itm` scores the same pairs (same
seed and probe_size) with a Matcher's ITM logits, a cross-encoder reading each image with
each caption, so the two tables compare directly.
"""

from collections.abc import Callable

import numpy as np

from vlm_jax.data import world
from vlm_jax.evals.matching import Matcher, match_pairs, tokenize_texts
from vlm_jax.evals.scoring import Scorer, embed_images, embed_texts, pad_rows


def winoground_metrics(pair_scores: np.ndarray) -> dict[str, float]:
    """text, image, group and acc2 of probe pairs; pair_scores [P, 2, 2] holds s[p, image,
    caption] with caption i the true one for image i."""
    pair_scores = np.asarray(pair_scores)
    if pair_scores.ndim != 3 or pair_scores.shape[1:] != (2, 2):
        raise ValueError(f"pair_scores must have shape [P, 2, 2], got {pair_scores.shape}.")
    s00, s01 = pair_scores[:, 0, 0], pair_scores[:, 0, 1]
    s10, s11 = pair_scores[:, 1, 0], pair_scores[:, 1, 1]
    image0_right = s00 > s01  # [P]
    image1_right = s11 > s10
    text_correct = image0_right & image1_right
    image_correct = (s00 > s10) & (s11 > s01)
    return {
        "text": float(np.mean(text_correct)),
        "image": float(np.mean(image_correct)),
        "group": float(np.mean(text_correct & image_correct)),
        "acc2": float(np.mean(np.concatenate([image0_right, image1_right]))),
    }


def pair_score_blocks(
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    image_embeddings: np.ndarray,
    caption_embeddings: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """[P, 2, 2] scores within each pair; row 2p + i of both inputs is side i of pair p.

    Only the 2x2 blocks on the diagonal are needed, so the similarity runs on chunks of
    pairs, every chunk padded to one size: cost grows as P * batch_size, not P^2.
    """
    num_rows = image_embeddings.shape[0]
    if num_rows % 2 or caption_embeddings.shape[0] != num_rows:
        raise ValueError(
            f"probe pairs need as many images as captions, two per pair; got {num_rows} "
            f"images and {caption_embeddings.shape[0]} captions."
        )
    num_pairs = num_rows // 2
    pairs_per_chunk = min(max(1, batch_size // 2), num_pairs)
    chunk_rows = 2 * pairs_per_chunk
    diagonal = np.arange(pairs_per_chunk)
    blocks = []
    for start in range(0, num_rows, chunk_rows):
        images = image_embeddings[start : start + chunk_rows]
        captions = caption_embeddings[start : start + chunk_rows]
        scores = np.asarray(
            similarity(pad_rows(images, chunk_rows), pad_rows(captions, chunk_rows)),
            dtype=np.float64,
        )
        if scores.shape != (chunk_rows, chunk_rows):
            raise ValueError(
                f"similarity returned shape {scores.shape} for {chunk_rows} images and "
                f"{chunk_rows} captions; it must return scores [N, M]."
            )
        scores = scores.reshape(pairs_per_chunk, 2, pairs_per_chunk, 2)
        chunk_blocks = scores[diagonal, :, diagonal, :]  # [pairs, 2, 2]: [p, image, caption]
        blocks.append(chunk_blocks[: images.shape[0] // 2])
    return np.concatenate(blocks, axis=0)


def blind_score_blocks(
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    mean_image_embedding: np.ndarray,
    caption_embeddings: np.ndarray,
) -> np.ndarray:
    """[P, 2, 2] scores of a model that sees no image: both sides of every pair are replaced
    by one mean image embedding [1, ...], so s[p, 0, j] == s[p, 1, j].

    By construction its text, image and group scores are 0 (each needs a caption, or an image,
    to beat itself), and its acc2 is at most 0.5: whichever caption it prefers is right for
    exactly one of the two images. acc2 = 0.5 means the text side tells the captions apart
    and no text prior can solve the probe; below 0.5 counts pairs whose captions tie (e.g. a
    bag-of-words text encoder on a word-order swap).
    """
    scores = np.asarray(similarity(mean_image_embedding, caption_embeddings), dtype=np.float64)
    caption_scores = scores.reshape(-1, 2)  # [P, caption]
    return np.repeat(caption_scores[:, None, :], 2, axis=1)  # [P, image, caption]


def _reference_images(eval_config) -> np.ndarray:
    """uint8 [R, S, S, 3]: as many val images as a probe kind has, for the blind baselines."""
    val_world = world.World("val", seed=eval_config.seed, image_size=eval_config.image_size)
    reference_size = min(2 * eval_config.probe_size, len(val_world))
    return np.stack([val_world[index]["image"] for index in range(reference_size)])


def _probe_set(kind: str, eval_config) -> tuple[np.ndarray, list[str]]:
    """images uint8 [2P, S, S, 3] and their 2P captions: row 2p + i is side i of pair p."""
    pairs = world.probe_pairs(kind, eval_config.probe_size, seed=eval_config.seed,
                              image_size=eval_config.image_size)
    images = np.stack([image for pair in pairs for image in pair.images])
    return images, [caption for pair in pairs for caption in pair.captions]


def probe_pair_rows(num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """(image rows, caption rows), each int [4P]: the four (image, caption) pairs inside each
    probe pair (rows 2p + i, as in `pair_score_blocks`), in [p, image, caption] order, so
    scores of these pairs reshape to the [P, 2, 2] blocks `winoground_metrics` reads."""
    pair, image, caption = np.meshgrid(np.arange(num_pairs), np.arange(2), np.arange(2),
                                       indexing="ij")  # each [P, 2, 2]
    return (2 * pair + image).ravel(), (2 * pair + caption).ravel()


def run_itm(matcher: Matcher, scorer: Scorer | None, eval_config) -> dict[str, float]:
    """itm_compositional/<kind>/{text, image, group, acc2, blind_acc2, blind_group}: `run`'s
    probe pairs scored by the Matcher's ITM logits. The blind model matches every caption
    with one image, the pixel mean of val images (no scene in it), so its text, image and
    group scores are 0 and its acc2 at most 0.5, as in `blind_score_blocks`."""
    del scorer  # the cross-encoder scores every pair itself
    if eval_config.probe_size < 1:
        raise ValueError(f"eval_config.probe_size must be >= 1, got {eval_config.probe_size}.")
    batch_size = eval_config.batch_size
    mean_image = np.round(_reference_images(eval_config).mean(axis=0)).astype(np.uint8)
    results = {}
    for kind in world.PROBE_KINDS:
        images, captions = _probe_set(kind, eval_config)
        tokens = tokenize_texts(matcher, captions)
        image_rows, caption_rows = probe_pair_rows(len(captions) // 2)
        pair_scores = match_pairs(matcher, images, tokens, image_rows, caption_rows,
                                  batch_size).reshape(-1, 2, 2)  # [P, image, caption]
        blind_logits = match_pairs(matcher, mean_image[None], tokens,
                                   np.zeros(len(captions), int), np.arange(len(captions)),
                                   batch_size)
        blind = winoground_metrics(np.repeat(blind_logits.reshape(-1, 1, 2), 2, axis=1))
        metrics = winoground_metrics(pair_scores)
        metrics["blind_acc2"] = blind["acc2"]
        metrics["blind_group"] = blind["group"]
        for metric, value in metrics.items():
            results[f"itm_compositional/{kind}/{metric}"] = value
    return results


def run(scorer: Scorer, eval_config) -> dict[str, float]:
    """compositional/<kind>/{text, image, group, acc2, blind_acc2, blind_group} for every
    kind in `world.PROBE_KINDS`, on `eval_config.probe_size` pairs each."""
    if eval_config.probe_size < 1:
        raise ValueError(f"eval_config.probe_size must be >= 1, got {eval_config.probe_size}.")
    batch_size = eval_config.batch_size
    # The blind model's image: the mean embedding of as many val images as a probe kind has.
    reference_embeddings = embed_images(scorer, _reference_images(eval_config), batch_size)
    mean_image_embedding = reference_embeddings.mean(axis=0, keepdims=True)  # [1, ...]

    results = {}
    for kind in world.PROBE_KINDS:
        images, captions = _probe_set(kind, eval_config)  # [2P, S, S, 3], 2P
        image_embeddings = embed_images(scorer, images, batch_size)
        caption_embeddings = embed_texts(scorer, captions, batch_size)
        pair_scores = pair_score_blocks(
            scorer.similarity, image_embeddings, caption_embeddings, batch_size
        )
        blind_scores = blind_score_blocks(
            scorer.similarity, mean_image_embedding, caption_embeddings
        )
        blind = winoground_metrics(blind_scores)
        metrics = winoground_metrics(pair_scores)
        metrics["blind_acc2"] = blind["acc2"]
        metrics["blind_group"] = blind["group"]
        for metric, value in metrics.items():
            results[f"compositional/{kind}/{metric}"] = value
    return results
