"""The trainer contract: declared capabilities, and evals a trainer cannot serve refused when
the config is checked, before any model is built."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

from configs import coca as coca_config
from configs import siglip as siglip_config
from vlm_jax import configlib, trainers
from vlm_jax.evals import datasets


def test_builtin_trainers_declare_their_capabilities():
    declared = {name: trainers.get_trainer(name).CAPABILITIES for name in trainers.TRAINERS}
    assert declared == {"contrastive": {"scorer"}, "llip": {"scorer"},
                        "coca": {"scorer", "captioner"}, "vq": set(),
                        "flava": {"scorer", "matcher", "reconstructor"},
                        "maskvlm": {"scorer", "matcher", "reconstructor"},
                        "lm": {"text_prior"}, "blip2": {"scorer", "matcher"},
                        "prefix_lm": {"captioner"},
                        "early_fusion": {"captioner", "image_likelihood"},
                        "cm3leon": {"captioner", "image_likelihood"}}


def test_init_batch_is_the_models_sample_inputs():
    config = siglip_config.get_config("tiny")
    batch = trainers.get_trainer("contrastive").init_batch(config)
    assert {key: (value.shape, value.dtype) for key, value in batch.items()} == {
        "images": ((1, 32, 32, 3), np.uint8), "text_tokens": ((1, 24), np.int32)}


def test_generative_evals_on_an_embedding_trainer_are_one_config_error():
    config = siglip_config.get_config("tiny")
    config.evals.names = ("zeroshot", "captioning")
    with pytest.raises(configlib.ConfigError, match=(
            r"^eval 'captioning' needs a captioner, which trainer 'contrastive' cannot make "
            r"\(its capabilities: scorer\); drop 'captioning' from config.evals.names, or use a "
            r"trainer that offers it$")):
        trainers.check_evals(config)


def test_coca_serves_every_eval_and_captioning_needs_a_judge():
    config = coca_config.get_config("tiny")
    trainers.check_evals(config)  # its own towers judge CLIPScore
    config.evals.names = ("captioning",)
    config.evals.clipscore_workdir = "/somewhere/siglip"
    assert trainers.evals.capabilities_needed(config.evals.names, config.evals) == {
        "captioning": {"captioner"}}


def test_unknown_evals_trainers_and_bad_specs_are_config_errors():
    config = siglip_config.get_config("tiny")
    config.evals.names = ("zeroshot", "nope")
    with pytest.raises(configlib.ConfigError, match=r"unknown evals \['nope'\]"):
        trainers.check_evals(config)
    config.evals.names = ("retrieval",)
    config.evals.retrieval = datasets.dataset_spec(source="array_record")
    with pytest.raises(configlib.ConfigError, match="evals.retrieval.source='array_record' "
                                                    "needs evals.retrieval.array_record_pattern"):
        trainers.check_evals(config)
    config.trainer = "contrastiv"
    with pytest.raises(configlib.ConfigError, match="unknown trainer 'contrastiv'"):
        trainers.check_evals(config)
    config.trainer = "module:no_such_module_here"
    with pytest.raises(configlib.ConfigError, match="cannot import 'no_such_module_here'"):
        trainers.check_evals(config)


def test_a_module_that_breaks_the_contract_is_named(monkeypatch):
    broken = types.ModuleType("broken_trainer")
    broken.CAPABILITIES = frozenset({"scorer"})
    broken.init_batch = broken.make_loss_fn = lambda *args: None
    monkeypatch.setitem(sys.modules, "broken_trainer", broken)
    with pytest.raises(ValueError, match="lacks make_scorer, which the trainer contract"):
        trainers.get_trainer("module:broken_trainer")
    broken.CAPABILITIES = {"scorer"}  # a set, not a frozenset: the declaration is checked
    with pytest.raises(ValueError, match="must declare CAPABILITIES, a frozenset"):
        trainers.get_trainer("module:broken_trainer")


def test_the_cli_refuses_an_eval_the_trainer_cannot_serve_before_training(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, "-m", "vlm_jax.main", "--config=configs/siglip.py:tiny",
         f"--workdir={tmp_path}", "--config.evals.names=('zeroshot','vqa')"],
        cwd=root, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=root, JAX_NUM_CPU_DEVICES="1"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: eval 'vqa' needs a captioner, which trainer 'contrastive' cannot make (its "
        "capabilities: scorer); drop 'vqa' from config.evals.names, or use a trainer that "
        "offers it")
    assert os.listdir(tmp_path) == []  # nothing built, nothing written
