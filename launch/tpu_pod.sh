#!/usr/bin/env bash
# Train on every host of a Cloud TPU VM pod: the same command runs on all workers through
# `gcloud compute tpus tpu-vm ssh --worker=all`, and each host's process finds the others with
# jax.distributed (vlm_jax/parallel.py reads the pod's hosts from the TPU VM metadata).
#
# Usage: TPU_NAME=NAME ZONE=ZONE [PROJECT=ID] launch/tpu_pod.sh COMMAND [ARGS]
#   setup   copy this tree to every host and install it there (venv, vlm_jax, jax[tpu])
#   train --config=FILE[:ARG] --workdir=DIR [--config.KEY=VALUE ...]
#           start training on every host (detached: a dropped ssh does not stop it), then
#           follow worker 0's log; exits with worker 0's status. DIR must be a directory all
#           hosts share: gs://BUCKET/PATH (mounted with gcsfuse at /mnt/gcs/BUCKET on every
#           host) or an NFS / Filestore mount.
#   logs    follow worker 0's log of the current or last run
#   stop    SIGTERM on every host: the run finishes its step, saves a checkpoint, exits 0;
#           `train` with the same arguments resumes it
#   REMOTE_DIR  the tree's directory on the hosts, relative to the home directory (default
#               vlm_jax); each host's log is REMOTE_DIR/train.log
set -euo pipefail

usage() {
  sed -n '6,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

if [ $# -eq 0 ]; then usage; fi
command=$1
shift
case $command in
  setup | train | logs | stop) ;;
  *) usage ;;
esac
: "${TPU_NAME:?set TPU_NAME to the TPU VM (pod) name}" "${ZONE:?set ZONE to its zone}"
remote_dir=${REMOTE_DIR:-vlm_jax}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

tpu() {  # tpu ssh|scp ARGS...: gcloud's TPU VM command for this pod
  local action=$1
  shift
  gcloud compute tpus tpu-vm "$action" "$@" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}
}

# gcsfuse (for gs:// workdirs) from Google's apt repository; TPU VMs run Ubuntu.
install_gcsfuse="echo deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main \
  | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null \
  && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
  | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null \
  && sudo apt-get update -q && sudo apt-get install -yq gcsfuse"

follow_worker_0() {
  # Waits for the run's pid file, follows the log until the process ends, then returns the
  # status the detached wrapper wrote.
  tpu ssh "$TPU_NAME" --worker=0 --command="cd $remote_dir \
    && while [ ! -s train.pid ]; do sleep 1; done \
    && tail --pid=\$(cat train.pid) -n +1 -F train.log \
    && while [ ! -s train.status ]; do sleep 1; done \
    && exit \$(cat train.status)"
}

case $command in
  setup)
    archive=$(mktemp -t vlm_jax.XXXXXX.tar.gz)
    trap 'rm -f "$archive"' EXIT
    tar -C "$root" --exclude=./.git --exclude=./.venv --exclude=./runs \
      --exclude=__pycache__ --exclude=./tests/.cache -czf "$archive" .
    tpu scp "$archive" "$TPU_NAME:vlm_jax.tar.gz" --worker=all
    tpu ssh "$TPU_NAME" --worker=all --command="mkdir -p $remote_dir \
      && tar -xzf vlm_jax.tar.gz -C $remote_dir && cd $remote_dir \
      && bash launch/setup_env.sh .venv \
      && { command -v gcsfuse >/dev/null || { $install_gcsfuse; }; } \
      && .venv/bin/python -m pip install -q \"jax[tpu]==\$(.venv/bin/python -c 'import jax; print(jax.__version__)')\" \
      && .venv/bin/python -c 'import jax; print(jax.devices())'"
    ;;
  train)
    workdir=""
    for arg in "$@"; do
      case $arg in --workdir=*) workdir=${arg#--workdir=} ;; esac
    done
    if [ -z "$workdir" ]; then usage; fi
    mount=true
    if [[ $workdir == gs://* ]]; then
      # The loop writes its workdir with plain file I/O (JSONL appends, atomic renames), so a
      # bucket is used through a gcsfuse mount at the same path on every host.
      bucket=${workdir#gs://}
      bucket=${bucket%%/*}
      inside=${workdir#"gs://$bucket"}
      inside=${inside#/}
      if [ -z "$inside" ]; then
        echo "--workdir=$workdir: name a folder inside the bucket, e.g. gs://$bucket/runs/a" >&2
        exit 2
      fi
      mount_point=/mnt/gcs/$bucket
      mount="mountpoint -q $mount_point || { sudo mkdir -p $mount_point \
        && sudo chown \$(id -u):\$(id -g) $mount_point \
        && gcsfuse --implicit-dirs $bucket $mount_point; }"
      args=()
      for arg in "$@"; do
        case $arg in
          --workdir=*) args+=("--workdir=$mount_point/$inside") ;;
          *) args+=("$arg") ;;
        esac
      done
      set -- "${args[@]}"
    fi
    # Each host: a wrapper in its own session runs training in the background, records its
    # pid (for `stop`) and, when it ends, its exit status (for `train` / `logs`). printf %q
    # quotes once for the wrapper's bash -c and once more for the ssh command's shell.
    run=".venv/bin/python -m vlm_jax.main $(printf '%q ' "$@")"
    wrapper="$run >train.log 2>&1 </dev/null & echo \$! >train.pid; wait \$!; echo \$? >train.status"
    tpu ssh "$TPU_NAME" --worker=all --command="$mount && cd $remote_dir \
      && if [ -s train.pid ] && kill -0 \$(cat train.pid) 2>/dev/null; then \
           echo \"a run is still going on \$(hostname); stop it first\" >&2; exit 1; fi \
      && rm -f train.pid train.status train.log \
      && { setsid nohup bash -c $(printf '%q' "$wrapper") >/dev/null 2>&1 </dev/null & }"
    follow_worker_0
    ;;
  logs)
    follow_worker_0
    ;;
  stop)
    tpu ssh "$TPU_NAME" --worker=all --command="kill -TERM \$(cat $remote_dir/train.pid)"
    ;;
esac
