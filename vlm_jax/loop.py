"""The one training loop every trainer shares: set up, resume, step, log, checkpoint, evaluate.

Read top to bottom, `train` is the whole run: the config picks the trainer (which supplies the
loss and the eval scorer); everything else here is common to all model families.
"""

from __future__ import annotations

import json
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vlm_jax import (
    checkpoint,
    configlib,
    evals,
    init_from,
    models,
    optim,
    parallel,
    restore,
    trainers,
)
from vlm_jax.data import pipeline
from vlm_jax.data import resume as data_resume
from vlm_jax.data import tokenizer as tokenizers
from vlm_jax.metrics import MetricWriter, Progress
from vlm_jax.preemption import PreemptionWatch
from vlm_jax.train_state import create_train_state, make_train_step


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the message names the step and the checkpoint kept."""


def check_workdir(workdir: str, config: ml_collections.ConfigDict, tokenizer) -> None:
    """Refuse to resume a workdir that holds a run of another model or vocabulary."""
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        record = _run_record(config, tokenizer)
        if {k: saved.get(k) for k in record} != record:
            raise checkpoint.CheckpointMismatchError(
                f"{workdir} holds a run of a different model or tokenizer (see {path}); "
                "use a new --workdir, or delete that one to start over"
            )


def _run_record(config: ml_collections.ConfigDict, tokenizer) -> dict:
    return {"model": config.model.to_dict(), "tokenizer": tokenizer.fingerprint}


def write_run_record(workdir: str, config: ml_collections.ConfigDict, tokenizer) -> None:
    """config.json: written once the model is built and any checkpoint restored, so a typo or a
    refused resume never rewrites the record of the run that is there."""
    if jax.process_index() == 0:
        path = os.path.join(workdir, "config.json")
        record = {**_run_record(config, tokenizer),
                  "config": json.loads(config.to_json_best_effort())}
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=1)
        os.replace(path + ".tmp", path)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train per `config` in `workdir` (resuming if it holds a checkpoint); returns final evals."""
    trainers.check_evals(config)  # evals the trainer cannot serve fail before anything is built
    config = configlib.with_workdir(config, workdir)  # trainers' run files, evals' pictures
    trainer = trainers.get_trainer(config.trainer)
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config)
    tokenizer = tokenizers.load_tokenizer(config.data)
    check_workdir(workdir, config, tokenizer)
    model, state, abstract_state, train_step = build(
        config, trainer, tokenizer.vocab_size, mesh, rules)
    print(f"model: {config.model.name}, {_count(state.params):,} parameters; "
          f"mesh {dict(mesh.shape)} over {jax.device_count()} devices, "
          f"{jax.process_count()} process(es)")

    ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
    run_record = data_resume.run_record(config.data, config.batch_size, config.seed,
                                        jax.process_count())
    start_step, corrupt_records = 0, 0
    if (restored := ckpt.restore_latest_intact(abstract_state)) is not None:
        start_step, state, data_state = restored
        # The data position is a function of the step: any process count resumes exactly.
        if note := data_resume.check_resume(data_state, run_record, start_step):
            print(note)
        corrupt_records = data_state["corrupt_records"]
        print(f"resumed from {ckpt.directory} at step {start_step}")
    elif config.get("init_from"):  # a fresh run starts from saved or imported weights
        state = init_from.load_into(state, config.init_from, config.get("init_from_regex", ".*"))
    write_run_record(workdir, config, tokenizer)
    data_iter = pipeline.make_train_iterator(
        config.data, tokenizer, config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        start_step=start_step)
    local_corrupt = 0  # this process's failed decodes since start_step

    writer = MetricWriter(workdir, resume_step=start_step)
    progress = Progress(config.total_steps, config.batch_size, start_step)
    preemption, preempted, step = PreemptionWatch(), False, start_step
    try:  # every way out (done, preempted, NaN, error) waits for the save in flight
        for step in range(start_step + 1, config.total_steps + 1):
            local_batch = next(data_iter)
            local_corrupt += int(np.sum(local_batch.pop("num_corrupt")))
            state, metrics = train_step(state, parallel.global_batch(local_batch, mesh, rules))
            is_last = step == config.total_steps
            preempted = preemption.reached()  # SIGTERM or Ctrl-C: save this step, then stop
            save_now = step % config.checkpoint_every == 0 or is_last or preempted
            if step % config.log_every == 0 or save_now:
                # The only host sync in the loop: metrics of this step, fetched at log points.
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not math.isfinite(scalars["train/loss"]):
                    ckpt.wait()
                    raise NonFiniteLossError(
                        f"loss is {scalars['train/loss']} at step {step}; the last checkpoint "
                        f"(step {ckpt.latest_step()}) is kept. Lower optim.lr or raise "
                        "optim.warmup_steps, then rerun with the same --workdir to resume")
                # Every process reaches the log points: the sum over all of them is a collective.
                total_corrupt = corrupt_records + _sum_over_processes(local_corrupt)
                scalars["data/corrupt_records"] = total_corrupt
                writer.write(step, scalars)
                print(progress.line(step, scalars["train/loss"]), flush=True)
            if save_now:
                ckpt.save(step, state, data_resume.data_state(step, run_record, total_corrupt))
            if preempted:
                break
            if config.eval_every and step % config.eval_every == 0 and not is_last:
                writer.write(step, run_evals(trainer, model, state, tokenizer, mesh, config))
    finally:
        preemption.close()
        ckpt.close()
        data_iter.close()  # grain workers hold shared memory until closed
    if preempted:
        writer.close()
        print(f"stopped by {preemption.signal_name} at step {step}, checkpoint saved; rerun the "
              "same command to resume", flush=True)
        return {}

    results = run_evals(trainer, model, state, tokenizer, mesh, config)
    writer.write(config.total_steps, results)
    writer.close()
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"step": int(state.step), **results}, f, indent=1, sort_keys=True)
        print(evals.format_table(results))
    return results


def build(config: ml_collections.ConfigDict, trainer, vocab_size: int, mesh, rules):
    """The model, its sharded initial state (+ abstract twin for restores) and jitted train step.

    Shared by `train` and the benchmarks, so both time exactly the same step.
    """
    model = models.build_model(config.model, vocab_size, jnp.dtype(config.compute_dtype))
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps)
    init_batch = trainer.init_batch(config)  # the trainer's sample inputs, by keyword
    init_params = lambda rng: model.init(rng, **init_batch)["params"]
    with nn.logical_axis_rules(rules):
        state, shardings, abstract_state = create_train_state(
            init_params, tx, config.seed, mesh, rules)
    loss_fn = trainer.make_loss_fn(model, config, mesh=mesh)
    train_step = make_train_step(loss_fn, tx, schedule, config.grad_accum_steps, shardings, mesh,
                                 param_rules=config.optim.get("param_rules", ()), rules=rules)
    return model, state, abstract_state, train_step


def run_evals(trainer, model, state, tokenizer, mesh, config) -> dict[str, float]:
    """Every eval in `config.evals.names`, timed, as a flat {"<eval>/<split>/<metric>": value}.

    The trainer serves what the evals need (`trainers.serve_evals`: a Scorer, a CaptionModel,
    a Matcher) in one dict; `trainers.check_evals` has already refused evals it cannot serve.
    """
    started = time.perf_counter()
    served = trainers.serve_evals(trainer, config.evals.names, model, state.params, tokenizer,
                                  mesh, config)
    results = evals.run_served(config.evals.names, served, config.evals,
                               judge=restore.clipscore_judge(config.evals, config.evals.names))
    print(f"evaluated {len(results)} metrics in {time.perf_counter() - started:.1f}s")
    return results


def _sum_over_processes(count: int) -> int:
    """The sum of an int over all processes (the count itself on one process)."""
    if jax.process_count() == 1:
        return count
    return int(np.sum(multihost_utils.process_allgather(np.int64(count))))


def _count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
