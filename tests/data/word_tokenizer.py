"""A whitespace tokenizer with hand-known ids (pad 0, bos 1, eos 2, unk 3, then WORDS), so that
format tests can write their expected arrays by hand."""

import hashlib

from vlm_jax.data.tokenizer_base import TokenizerBase

WORDS = ("user:", "assistant:", "what", "colour", "is", "the", "circle?", "red", "a", "circle.",
         "blue", "square.")  # ids 4..15


class WordTokenizer(TokenizerBase):
    def __init__(self, specials=(), pad_token=""):
        self.vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
        self.vocab.update({w: 4 + i for i, w in enumerate(WORDS)})
        self.words = {i: w for w, i in self.vocab.items()}
        self.path, self.base_vocab_size = "words", len(self.vocab)
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self.base_fingerprint = hashlib.sha256(" ".join(self.vocab).encode()).hexdigest()[:16]
        self._add_specials(specials, pad_token)

    def _base_token_id(self, name):
        return self.vocab.get(name)

    def _default_pad_id(self):
        return 0

    def _piece_ids(self, texts):
        return [[self.vocab.get(w, 3) for w in t.split()] for t in texts]

    def _decode_pieces(self, ids):
        return " ".join(self.words[i] for i in ids)
