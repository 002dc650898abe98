"""python -m vlm_jax.generate end to end: a tiny Frozen run trained two steps answers prompts
about a PNG file, from one prompt, a prompts file or none; bad inputs are one-line errors."""

import numpy as np
import pytest
from PIL import Image

from configs import frozen
from tests.trainers.test_prefix_lm import tiny_config
from vlm_jax import generate, loop
from vlm_jax.data import world

# Trains a run, restores it and compiles several decoders: ~10 min on the loaded 2-core
# machine, so outside the default suite.


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    config = tiny_config(frozen, "tiny,steps=2,batch=8")
    config.init_from = ""
    config.data.special_tokens = ("<image>",)
    config.model.lm.vocab_size = 256  # the world tokenizer's base vocabulary
    config.model.image_token_id = 256
    config.model.update(bos_id=2, pad_id=0)
    config.evals.names = ()
    config.decode.max_len = 4
    loop.train(config, str(root / "run"))
    image = world.World("val")[0]["image"]
    path = root / "scene.png"
    Image.fromarray(np.kron(image, np.ones((3, 3, 1), np.uint8))).save(path)  # 96 px file
    return str(root / "run"), str(path), root


@pytest.mark.slow
def test_answers_one_prompt_a_prompts_file_and_captions(trained):
    workdir, image, root = trained
    prompts_file = root / "prompts.txt"
    prompts_file.write_text("what colour is the circle?\n\n<image>how many objects are there?\n")
    prompts = generate.read_prompts(None, str(prompts_file))
    assert prompts == ["what colour is the circle?", "<image>how many objects are there?"]
    pairs = generate.answer(workdir, image, prompts)
    assert [p for p, _ in pairs] == prompts
    assert all(isinstance(text, str) and len(text.split()) <= 4 for _, text in pairs)
    # Greedy decoding is deterministic; one prompt alone gets the answer it got in the batch.
    assert generate.answer(workdir, image, prompts[:1]) == pairs[:1]
    (caption,) = generate.answer(workdir, image, None)
    assert caption[0] == "(caption)"
    sampled = generate.answer(workdir, image, prompts, seed=3, strategy="sample",
                              temperature=1.5, max_len=3)
    assert sampled == generate.answer(workdir, image, prompts, seed=3, strategy="sample",
                                      temperature=1.5, max_len=3)


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(trained, tmp_path):
    workdir, image, _ = trained
    with pytest.raises(generate.UsageError, match="give --prompt or --prompts, not both"):
        generate.read_prompts("a", "b")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(generate.UsageError, match="holds no prompt"):
        generate.read_prompts(None, str(empty))
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    with pytest.raises(generate.UsageError, match="is not an image Pillow can open"):
        generate.answer(workdir, str(not_image), None)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate.answer(workdir, image, ["hi"], strategy="sample", temperature=0.0)


def test_command_line_reads_decoding_overrides_and_imports_beside_main():
    from vlm_jax import main  # noqa: F401  (both define --workdir: absl flags would clash)

    args = generate.parse_args(["--workdir=w", "--image=i.png", "--strategy=sample",
                                "--top_k=5"])
    assert (args.workdir, args.strategy, args.top_k, args.temperature) == ("w", "sample", 5,
                                                                          None)
    with pytest.raises(SystemExit):
        generate.parse_args(["--workdir=w"])  # --image is required
