"""FLAVA's MIM targets from run files: a VQ tokenizer's codes (equal to the tokenizer called
directly; a wrong grid or head size is one line naming the fix) and the k-means codebook saved
in the workdir (reloaded, not refitted, with identical codes; a file of another shape is
refused). restore fills config.workdir (configlib.with_workdir; the loop's: test_toy_family)."""

import numpy as np
import pytest

from configs import flava as flava_config
from vlm_jax import (
    checkpoint,
    configlib,
    loop,
    mim_targets,
    parallel,
    restore,
    trainers,
    vq_tokenizer,
)
from vlm_jax.data import world
from vlm_jax.data.tokenizer import load_tokenizer
from vlm_jax.trainers import flava as flava_trainer

SIZE, PATCH, CODEBOOK = 32, 8, 16  # FLAVA :tiny's 32 px and patch 8: a 4 x 4 patch grid


def world_images(n, split="val"):
    source = world.World(split, image_size=SIZE)
    return np.stack([source[i]["image"] for i in range(n)])


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    """A workdir holding config.json and one checkpoint of an untrained VQ (random params are
    enough to compare codes) with a 4 x 4 code grid (downsampling 2^3 of 32 px), 16 codes."""
    workdir = str(tmp_path_factory.mktemp("vq"))
    config = configlib.load_config("configs/vq.py:tiny")
    config.model.update(channels=(8, 8, 8), code_dim=8, codebook_size=CODEBOOK)
    config.data.image_size = SIZE
    trainer = trainers.get_trainer("vq")
    mesh, rules = parallel.make_mesh(config.mesh), parallel.logical_rules(config)
    tokenizer = load_tokenizer(config.data)
    loop.write_run_record(workdir, config, tokenizer)
    _, state, _, _ = loop.build(config, trainer, tokenizer.vocab_size, mesh, rules)
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    ckpt.save(1, state, {"iterator": {}, "corrupt_records": 0})
    ckpt.close()
    return workdir


def flava_tiny(**mim):
    config = flava_config.get_config("tiny")
    config.mim.update(fit_images=8, num_codes=CODEBOOK, **mim)
    config.model.mim_dim = CODEBOOK
    return config


def test_restore_fills_the_workdir(vq_run):
    restored = restore.restore_run(vq_run)
    assert restored.config.workdir == restored.config.evals.output_dir == vq_run


def test_vq_targets_are_the_tokenizers_codes(vq_run):
    workdir = vq_run
    config = flava_tiny(target="vq", vq_workdir=workdir)
    images = world_images(6)
    codes = np.asarray(flava_trainer.image_targets(config, PATCH, CODEBOOK)(images))
    direct = vq_tokenizer.load_vq(workdir).tokenize(images)
    assert codes.shape == (6, (SIZE // PATCH) ** 2) and codes.dtype == np.int32
    np.testing.assert_array_equal(codes, direct)
    assert len(np.unique(direct)) > 1  # not a constant grid that any code path would match


def test_vq_target_refuses_a_wrong_head_size_grid_or_missing_run(vq_run):
    workdir = vq_run
    config = flava_tiny(target="vq", vq_workdir=workdir)
    with pytest.raises(ValueError, match=r"model.mim_dim=64 must equal the VQ codebook size 16; "
                                         r"set --config.model.mim_dim=16"):
        flava_trainer.image_targets(config, PATCH, 64)
    with pytest.raises(ValueError, match=r"VQ tokenizer's 4x4 code grid .* must be FLAVA's 8x8 "
                                         r"patch grid \(32 px, patch 4\)"):
        flava_trainer.image_targets(config, 4, CODEBOOK)
    with pytest.raises(ValueError, match="needs mim.vq_workdir"):
        flava_trainer.image_targets(flava_tiny(target="vq"), PATCH, CODEBOOK)


def test_kmeans_codebook_is_saved_and_reloaded_without_a_refit(tmp_path, monkeypatch):
    config = flava_tiny(target="kmeans")
    config.workdir = str(tmp_path)
    images = world_images(4)
    fitted = np.asarray(flava_trainer.image_targets(config, PATCH, CODEBOOK)(images))
    saved = np.load(tmp_path / mim_targets.KMEANS_FILE)
    assert saved.shape == (CODEBOOK, PATCH * PATCH * 3)
    # The saved file is the fit itself: k-means on the same 8 train images with the same seed.
    patches = np.asarray(mim_targets.normalized_patches(world_images(8, "train"), PATCH))
    np.testing.assert_allclose(saved, mim_targets.fit_kmeans(
        patches.reshape(-1, PATCH * PATCH * 3), CODEBOOK, config.seed), atol=1e-5)

    def refit(*args, **kwargs):
        raise AssertionError("a resumed run must read the saved codebook, not refit it")

    monkeypatch.setattr(mim_targets, "fit_kmeans", refit)
    config.seed = 5  # a refit would differ; the saved file is read whatever the seed
    reloaded = np.asarray(flava_trainer.image_targets(config, PATCH, CODEBOOK)(images))
    np.testing.assert_array_equal(reloaded, fitted)
    assert len(np.unique(fitted)) > 1

    np.save(tmp_path / mim_targets.KMEANS_FILE, saved[:8])
    with pytest.raises(ValueError, match=r"holds a k-means codebook of shape \(8, 192\), this "
                                         r"run needs \(16, 192\)"):
        flava_trainer.image_targets(config, PATCH, CODEBOOK)


def test_kmeans_without_a_workdir_fits_and_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = flava_tiny(target="kmeans")  # workdir "": a config outside a run
    flava_trainer.image_targets(config, PATCH, CODEBOOK)
    assert not list(tmp_path.iterdir())
