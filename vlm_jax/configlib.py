"""Config arguments: `key=value,...` strings typed from the defaults, and config loading.

A config file exposes `get_config(arg: str | None) -> ConfigDict`. Its `arg` names a preset
(`tiny`, `B/16`) and/or overrides (`batch=64,steps=10`); `parse_arg` types every value from the
default it replaces, so `batch=abc` fails with a message that names `batch` and its type.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys

import ml_collections


class ConfigError(ValueError):
    """A config value or key is wrong; the message names it and what would be accepted."""


def _coerce(key: str, text: str, default):
    """`text` converted to the type of `default`; ConfigError naming `key` otherwise."""
    kind = type(default)
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, str):
            return text
        if isinstance(default, (tuple, list)):
            value = ast.literal_eval(text)
            return kind(value if isinstance(value, (tuple, list)) else (value,))
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"config arg {key}={text!r}: expected a {kind.__name__} like {default!r}"
        ) from None
    if default is None:
        return ast.literal_eval(text) if text[:1] in "[(0123456789-" else text
    raise ConfigError(f"config arg {key}: cannot set a value of type {kind.__name__}")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parse `arg` ("tiny,batch=64") against `defaults`; bare words set a bool default to True.

    Returns a locked ConfigDict holding every default, updated by the arg.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, has_value, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"unknown config arg {key!r}; known: {', '.join(sorted(defaults))}"
            )
        if not has_value:
            if not isinstance(defaults[key], bool):
                raise ConfigError(f"config arg {key!r} needs a value: {key}=...")
            parsed[key] = True
        else:
            parsed[key] = _coerce(key, text.strip(), defaults[key])
    parsed.lock()
    return parsed


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Load `path/to/config.py[:arg]` by calling its `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (expected e.g. configs/siglip.py:tiny)")
    # Config files import their siblings as `configs.common`: put the folder above on the path.
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)
    spec_obj = importlib.util.spec_from_file_location("_vlm_jax_config", path)
    module = importlib.util.module_from_spec(spec_obj)
    spec_obj.loader.exec_module(module)
    return module.get_config(arg or None)


def override(config: ml_collections.ConfigDict, dotted_key: str, text: str) -> None:
    """Set `config.a.b = text`, typed from the current value; unknown keys are an error."""
    *parents, leaf = dotted_key.split(".")
    node = config
    for i, name in enumerate(parents):
        if name not in node:
            raise ConfigError(f"unknown config key {'.'.join(parents[: i + 1])!r}")
        node = node[name]
    if leaf not in node:
        known = ", ".join(sorted(node.keys()))
        raise ConfigError(f"unknown config key {dotted_key!r}; known here: {known}")
    node[leaf] = _coerce(dotted_key, text, node[leaf])


def with_workdir(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """A copy of `config` that knows its run's directory: `workdir` (where a trainer keeps
    files made for the run, e.g. FLAVA's k-means codebook) and, when empty, `evals.output_dir`
    (where evals write pictures). `loop.train` and `restore.restore_run` call it; a config
    built outside a run keeps workdir "" (nothing is saved)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.workdir = workdir
        if "evals" in config and not config.evals.get("output_dir", ""):
            config.evals.output_dir = workdir
    return config
