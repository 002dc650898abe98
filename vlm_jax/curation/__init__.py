"""Data curation: CLIP-score filtering, semantic deduplication (SemDeDup), MetaCLIP balancing
and caption heuristics. Each is a function over arrays returning a boolean keep mask [n];
vlm_jax/curation/cli.py applies them to ArrayRecord sets."""
