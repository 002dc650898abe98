"""Caption metrics: corpus BLEU-4 and CIDEr-D, computed as the COCO caption toolkit
(pycocoevalcap) computes them, and CLIPScore.

Inputs are pre-tokenized word lists (`caption_words`): pycocoevalcap's own PTB tokenizer needs
Java, and our captions are lower-case words and punctuation, so splitting off the punctuation
is all the tokenizing they need. Both metrics take one candidate and several references per
image.

BLEU-4 (Papineni et al., 2002), corpus level as `pycocoevalcap.bleu.Bleu(4)`: n-gram counts
clipped by their largest count in any one reference, summed over the corpus; geometric mean
of the four precisions; brevity penalty against, per image, the reference length closest to
the candidate's (ties: the shorter). The toolkit's smoothing constants (1e-15 over 1e-9) are
kept so the numbers agree to rounding.

CIDEr-D (Vedantam et al., 2015), as `pycocoevalcap.cider.Cider` (which is the "-D" variant):
per n = 1..4, TF-IDF vectors of n-grams with the document frequency counted over the
*evaluated corpus's* references (so a score depends on the corpus it is in); the candidate's
weights are clipped at the reference's, the cosine is damped by exp(-delta^2 / (2 sigma^2))
with delta the difference in length, averaged over n and references, times 10. As in the
toolkit, "length" is the number of bigrams (words - 1), which is what its code counts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

BLEU_ORDER = 4
CIDER_ORDER = 4
CIDER_SIGMA = 6.0
CLIPSCORE_WEIGHT = 2.5  # Hessel et al. (2021): rescales cosines of CLIP ViT-B/32 to about [0, 1]
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9  # pycocoevalcap's: a zero numerator still gives 0

Words = Sequence[str]
_WORD = re.compile(r"[a-z0-9]+")


def caption_words(text: str) -> list[str]:
    """Lower-case words of a caption, punctuation dropped: "A red circle." -> [a, red, circle]."""
    return _WORD.findall(text.lower())


def ngram_counts(words: Words, max_order: int) -> Counter:
    """Counts of every n-gram (as a tuple of words) for n = 1..max_order."""
    counts = Counter()
    for n in range(1, max_order + 1):
        for start in range(len(words) - n + 1):
            counts[tuple(words[start : start + n])] += 1
    return counts


def _check_corpus(candidates: Sequence[Words], references: Sequence[Sequence[Words]]) -> None:
    if len(candidates) != len(references) or not candidates:
        raise ValueError(
            f"need one candidate and one list of references per image, at least one image; got "
            f"{len(candidates)} candidates and {len(references)} reference lists."
        )
    if any(not refs for refs in references):
        raise ValueError("every image needs at least one reference caption.")
    for caption in (*candidates, *(ref for refs in references for ref in refs)):
        if isinstance(caption, str):
            raise TypeError("captions must be word lists (see caption_words), not strings.")


def corpus_bleu(
    candidates: Sequence[Words], references: Sequence[Sequence[Words]], max_order: int = BLEU_ORDER
) -> float:
    """Corpus BLEU-`max_order` of candidates[i] against references[i] (word lists)."""
    _check_corpus(candidates, references)
    guesses, corrects = [0] * max_order, [0] * max_order
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        max_ref_counts = Counter()
        for ref in refs:
            max_ref_counts |= ngram_counts(ref, max_order)  # | keeps the larger count
        for ngram, count in ngram_counts(candidate, max_order).items():
            corrects[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for n in range(max_order):
            guesses[n] += max(0, len(candidate) - n)
        candidate_length += len(candidate)
        reference_length += min((abs(len(ref) - len(candidate)), len(ref)) for ref in refs)[1]
    log_precision = sum(
        math.log((correct + _BLEU_TINY) / (guess + _BLEU_SMALL))
        for correct, guess in zip(corrects, guesses, strict=True)
    )
    bleu = math.exp(log_precision / max_order)
    ratio = (candidate_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    if ratio < 1:
        bleu *= math.exp(1 - 1 / ratio)
    return bleu


def _tfidf(counts: Counter, log_num_images: float, document_frequency: Counter, order: int):
    """(per-n {ngram: tf-idf} dicts, per-n L2 norms, bigram count) of one caption."""
    vectors = [{} for _ in range(order)]
    for ngram, count in counts.items():
        # An n-gram absent from every reference gets document frequency 1 (idf log N).
        idf = log_num_images - math.log(max(1.0, document_frequency[ngram]))
        vectors[len(ngram) - 1][ngram] = count * idf
    norms = [math.sqrt(sum(w * w for w in vector.values())) for vector in vectors]
    num_bigrams = sum(count for ngram, count in counts.items() if len(ngram) == 2)
    return vectors, norms, num_bigrams


def cider_d_scores(
    candidates: Sequence[Words],
    references: Sequence[Sequence[Words]],
    max_order: int = CIDER_ORDER,
    sigma: float = CIDER_SIGMA,
) -> np.ndarray:
    """Per-image CIDEr-D [N] of candidates[i] against references[i]; the corpus score is the
    mean. Document frequencies come from all references given, so pass the whole corpus."""
    _check_corpus(candidates, references)
    reference_counts = [[ngram_counts(ref, max_order) for ref in refs] for refs in references]
    document_frequency = Counter()
    for counts_of_image in reference_counts:
        document_frequency.update(set().union(*counts_of_image))  # once per image
    log_num_images = math.log(len(candidates))
    scores = np.zeros(len(candidates))
    for image, candidate in enumerate(candidates):
        cand_vectors, cand_norms, cand_length = _tfidf(
            ngram_counts(candidate, max_order), log_num_images, document_frequency, max_order)
        total = np.zeros(max_order)
        for counts in reference_counts[image]:
            ref_vectors, ref_norms, ref_length = _tfidf(
                counts, log_num_images, document_frequency, max_order)
            penalty = math.exp(-((cand_length - ref_length) ** 2) / (2 * sigma**2))
            for n in range(max_order):
                # The candidate's weight is clipped at the reference's ("-D": no gain from
                # repeating a matching n-gram).
                ref_weights = ref_vectors[n]
                dot = sum(min(weight, ref_weights.get(ngram, 0.0)) * ref_weights.get(ngram, 0.0)
                          for ngram, weight in cand_vectors[n].items())
                if cand_norms[n] != 0 and ref_norms[n] != 0:
                    dot /= cand_norms[n] * ref_norms[n]
                total[n] += dot * penalty
        scores[image] = 10.0 * total.mean() / len(reference_counts[image])
    return scores


def corpus_cider_d(candidates: Sequence[Words], references: Sequence[Sequence[Words]]) -> float:
    """Corpus CIDEr-D: the mean of `cider_d_scores`."""
    return float(np.mean(cider_d_scores(candidates, references)))


def clip_score(
    image_embeddings: np.ndarray, caption_embeddings: np.ndarray, weight: float = CLIPSCORE_WEIGHT
) -> np.ndarray:
    """CLIPScore [N] of caption i for image i: weight * max(cos(image_i, caption_i), 0)."""
    image_embeddings = np.asarray(image_embeddings, dtype=np.float64)
    caption_embeddings = np.asarray(caption_embeddings, dtype=np.float64)
    if image_embeddings.ndim != 2 or image_embeddings.shape != caption_embeddings.shape:
        raise ValueError(
            f"CLIPScore needs image and caption embeddings of one shape [N, D]; got "
            f"{image_embeddings.shape} and {caption_embeddings.shape}."
        )
    norms = np.linalg.norm(image_embeddings, axis=1) * np.linalg.norm(caption_embeddings, axis=1)
    cosine = np.sum(image_embeddings * caption_embeddings, axis=1) / np.maximum(norms, 1e-12)
    return weight * np.maximum(cosine, 0.0)
