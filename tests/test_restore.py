"""Restoring a run to evaluate it: params only (no optimizer state built or read), equal to
what was saved, and the run's scorer serves the evals."""

import jax
import ml_collections
import numpy as np
import pytest

from configs import siglip as siglip_config
from vlm_jax import checkpoint, loop, optim, parallel, restore, trainers
from vlm_jax.data.tokenizer import load_tokenizer


def micro_siglip():
    config = siglip_config.get_config("tiny")
    config.model.embed_dim = 16
    config.model.image.update(width=16, depth=1, mlp_dim=32, num_heads=2)
    config.model.text.update(width=16, depth=1, mlp_dim=32, num_heads=2)
    config.data.update(image_size=16, text_length=8)
    return config


@pytest.fixture
def saved_run(tmp_path):
    """A workdir holding config.json and one checkpoint of a micro SigLIP whose params differ
    from a fresh init (so a restore that re-initialised would be caught)."""
    config = micro_siglip()
    trainer = trainers.get_trainer(config.trainer)
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    tokenizer = load_tokenizer(config.data)
    loop.write_run_record(str(tmp_path), config, tokenizer)
    _, state, _, _ = loop.build(config, trainer, tokenizer.vocab_size, mesh, rules)
    state = state.replace(params=jax.tree_util.tree_map(lambda p: p + 0.5, state.params))
    ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(7, state, {"iterator": {}, "corrupt_records": 0})
    ckpt.close()
    return tmp_path, state


def test_restore_reads_the_params_and_builds_no_optimizer(saved_run, monkeypatch):
    workdir, saved = saved_run

    def no_optimizer(*args, **kwargs):
        raise AssertionError("restoring to evaluate must not build an optimizer")

    monkeypatch.setattr(optim, "make_optimizer", no_optimizer)
    run = restore.restore_run(str(workdir))
    assert not hasattr(run, "opt_state")
    assert jax.tree_util.tree_structure(run.params) == jax.tree_util.tree_structure(saved.params)
    for got, expected in zip(jax.tree_util.tree_leaves(run.params),
                             jax.tree_util.tree_leaves(saved.params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    # The target restore fills holds the params alone: no optimizer-state leaves at all.
    target = restore.RestoredParams(restore.abstract_params(
        run.model, run.trainer, run.config, run.mesh, parallel.logical_rules(run.config)))
    assert [field for field in vars(target)] == ["params"]
    assert len(jax.tree_util.tree_leaves(target)) == len(jax.tree_util.tree_leaves(saved.params))
    assert len(jax.tree_util.tree_leaves(saved.opt_state)) > 0  # a train state has them
    assert run.caption_model() is None  # SigLIP cannot caption


def test_the_restored_scorer_embeds_with_the_saved_params(saved_run):
    workdir, saved = saved_run
    run = restore.restore_run(str(workdir))
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    expected = run.model.apply({"params": saved.params}, images, method=run.model.encode_image)[0]
    np.testing.assert_allclose(run.scorer().encode_images(images), np.asarray(expected),
                               rtol=1e-5, atol=1e-6)


def test_a_workdir_without_a_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no run"):
        restore.restore_run(str(tmp_path))


def _fake_run(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_a_relative_vq_path_resolves_against_the_tree_the_run_was_trained_in(tmp_path,
                                                                              monkeypatch):
    # Trained from tmp/report as vq=runs/tokenizers/vq_tiny (not beside the run); read now
    # from another cwd.
    families = tmp_path / "report" / "runs" / "families"
    vq_run = _fake_run(tmp_path / "report" / "runs" / "tokenizers" / "vq_tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recorded = ml_collections.ConfigDict({"vq": "runs/tokenizers/vq_tiny", "trainer": "vq"})
    restore.resolve_run_paths(recorded, str(families / "chameleon_tiny"))
    assert recorded.vq == str(vq_run)
    assert recorded.trainer == "vq"  # not a run reference, untouched


def test_a_relative_vq_path_resolves_beside_a_runs_folder_copied_on_its_own(tmp_path,
                                                                            monkeypatch):
    copy = tmp_path / "copy"  # the families folder copied without runs/families above it
    vq_run = _fake_run(copy / "vq_tiny")
    monkeypatch.chdir(tmp_path)
    recorded = ml_collections.ConfigDict({"vq": "runs/families/vq_tiny"})
    restore.resolve_run_paths(recorded, str(copy / "chameleon_tiny"))
    assert recorded.vq == str(vq_run)


def test_a_vq_path_found_nowhere_or_absolute_stays_as_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "vq_tiny").mkdir(parents=True)  # a folder, but holding no run
    for value in ("runs/vq_tiny", "/abs/vq_tiny", ""):
        recorded = ml_collections.ConfigDict({"vq": value})
        restore.resolve_run_paths(recorded, str(tmp_path / "runs" / "chameleon_tiny"))
        assert recorded.vq == value
