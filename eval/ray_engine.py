"""eval.study's Ray engine: each (regime, arm, seed) run, with its evaluations, one Ray Tune trial.

  python -m eval.study --plan=regimes --engine=ray                               # embedded Ray
  python -m eval.study --plan=regimes --engine=ray --ray_address=HEAD:6379 \\
      --output_dir=/shared/studies/regimes --cpus_per_run=4 --gpus_per_run=1     # a cluster

A trial is a plain function trainable that calls what the local engine calls,
`StudyRun.run` (eval/study_runs.py): train.py into the run directory, then `python -m
eval` for the evaluations that have no result yet, then the small result files copied to
`--results_dir`. Ray Train's `TensorflowTrainer` is not used: it forces legacy Keras 2 on
its workers (ray-project/ray#47464, #48910), and Keras 3's `fit` does not run under
`MultiWorkerMirroredStrategy` (keras-team/keras#20585); a run here is one process that
trains on the devices of its trial.

Failures: a trial whose process dies (train.py killed, the Ray worker or its node lost)
is retried up to `--max_failures` times, and the retry resumes the run after its last
finished epoch from the run directory's checkpoint (train.py does that), so no epoch
runs twice. A study interrupted as a whole and started again submits only the runs
that are not complete (`pending`). Everything is read from and written to the study
directory, so it must be on a filesystem every node mounts at the same path; Ray Tune
keeps its own records (each trial's result and error) under `DIR/ray/`.

Imports nothing heavy: Ray workers import this module to run a trial.
"""

import logging
import os
import pathlib
import re
import socket
import time

from eval.study_runs import ROOT  # noqa: F401 (the project's root, where commands run)

# How long --ray_address's head may take to answer before the study gives up on it.
CONNECT_TIMEOUT_S = 5.0


class RayEngineError(ValueError):
    """Ray cannot run the study as asked; the one-line message names the flag."""


def import_ray():
    """`ray`, or a `RayEngineError` that says how to install it."""
    try:
        import ray
        from ray import tune  # noqa: F401 (Ray Tune is an extra of the ray package)
    except ImportError as error:
        raise RayEngineError(
            f"flag --engine=ray: Ray Tune is not installed ({error}); install it with "
            "pip install -r requirements-ray.txt, or use --engine=local"
        ) from None
    return ray


def parse_address(address):
    """`(host, port)` of `--ray_address` (HOST:PORT), or None for auto.

    Raises:
      RayEngineError: The address has none of these forms.
    """
    if address == "auto":
        return None
    match = re.fullmatch(r"\[?([^\s/\[\]]+?)\]?:(\d{1,5})", address)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise RayEngineError(
            f"flag --ray_address={address}: expected HOST:PORT (the head's `ray start "
            "--head --port`) or auto (the cluster this machine belongs to)"
        )
    return match.group(1), int(match.group(2))


def _check_reachable(address):
    """A one-line error at once, where Ray itself would retry for a minute."""
    endpoint = parse_address(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise RayEngineError(
            f"flag --ray_address={address}: no Ray cluster answers at "
            f"{endpoint[0]}:{endpoint[1]} ({reason.lower()}); start its head there with "
            f"`ray start --head --port={endpoint[1]}`, or leave the flag out for an "
            "embedded Ray on this machine"
        ) from None


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def connect(address, cpus_per_run, gpus_per_run):
    """Starts an embedded Ray (`address` None) or joins a cluster; checks the resources.

    Args:
      address: `--ray_address`, or None for an embedded Ray on this machine.
      cpus_per_run: The CPUs each trial reserves.
      gpus_per_run: The GPUs each trial reserves.

    Returns:
      A line that describes the cluster: where, its nodes, CPUs and GPUs.

    Raises:
      RayEngineError: Ray is not installed, the cluster cannot be reached, or no node
        of it has the resources of one run. Nothing is left running.
    """
    ray = import_ray()
    if address is not None:
        _check_reachable(address)
    else:
        # The embedded Ray's one node is this machine, with the CPUs Ray finds on it: a
        # run that needs more is refused before Ray starts (seconds).
        problem = _unfit("the embedded Ray", cpus_per_run, 0, _local_cpus(ray), 0)
        if problem:
            raise RayEngineError(problem)
    try:
        if address is None:
            ray.init(address="local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as error:  # Ray raises ConnectionError, RuntimeError, ...
        flag = f"--ray_address={address}" if address else "--engine=ray"
        what = "join a Ray cluster" if address else "start an embedded Ray"
        raise RayEngineError(f"flag {flag}: cannot {what}: {_first_line(error)}") from None
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    cluster = f"the Ray cluster at {address}" if address else "the embedded Ray"
    problem = _unfit(cluster, cpus_per_run, gpus_per_run, most_cpus, most_gpus)
    if problem:
        ray.shutdown()
        raise RayEngineError(problem)
    total_cpus = sum(node.get("CPU", 0) for node in nodes)
    total_gpus = sum(node.get("GPU", 0) for node in nodes)
    return (f"{cluster}: {len(nodes)} node(s), {total_cpus:g} CPUs, {total_gpus:g} GPUs")


def _local_cpus(ray):
    """The CPUs an embedded Ray finds on this machine (its own count), or infinity
    where this Ray does not say (it is then checked once started)."""
    try:
        return ray._private.utils.get_num_cpus()
    except AttributeError:
        return float("inf")


def _unfit(cluster, cpus_per_run, gpus_per_run, most_cpus, most_gpus):
    """The one line that says no node holds one run, or None."""
    if cpus_per_run > most_cpus:
        problem = (f"flag --cpus_per_run={cpus_per_run}: no node of {cluster} has "
                   f"{cpus_per_run} CPUs (the largest has {most_cpus:g})")
    elif gpus_per_run > most_gpus:
        problem = (f"flag --gpus_per_run={gpus_per_run:g}: no node of {cluster} has "
                   f"{gpus_per_run:g} GPUs (the largest has {most_gpus:g})")
    else:
        return None
    return f"{problem}; a run's trial runs on one node"


def pending(runs):
    """The runs that are not complete (trained and evaluated), in order."""
    return [run for run in runs if not run.is_complete()]


# Written by the study in its Ray Tune directory before the trials start: a trial that
# does not find it runs on a node that does not mount the study directory.
MARKER = ".study_directory"


def _trial(config, runs, marker):
    """The trainable: one run end to end, on the node Ray chose.

    Raises:
      RuntimeError: This node does not see the study directory (`marker` is missing):
        what it trained would be lost to the study, and a retry would start over.
    """
    if not pathlib.Path(marker).is_file():
        raise RuntimeError(
            f"the study directory {pathlib.Path(marker).parent.parent} is not on node "
            f"{socket.gethostname()}: mount it at the same path on every node (README, "
            "Running a study on Ray)"
        )
    return runs[config["run"]].run()


def _reason(text):
    """A short reason for a trial's failure, from its error's text."""
    text = text.rsplit("Failure # ", 1)[-1]  # an error file holds every failure of the trial
    match = re.search(r"\.\.\. failed \(([^)]*)\)", text)
    if match:
        return f"a command failed ({match.group(1)})"
    if "ActorDiedError" in text or "RayActorError" in text:
        return "its process died"
    errors = re.findall(r"^\w*Error: (.+)$", text, re.M)
    return errors[-1].strip() if errors else _first_line(text) if text.strip() else "unknown"


def _failure(trial):
    """`_reason` of a trial's latest failure, from its error file (on the driver, where
    Tune writes it before it reaches the storage)."""
    try:
        return _reason(pathlib.Path(trial.error_file).read_text() if trial.error_file else "")
    except OSError:
        return _reason("")


def _callback_class():
    from ray import tune

    class Echo(tune.Callback):
        """Progress lines: a run done, a run retried, a run given up."""

        def __init__(self, runs, total, max_failures, echo):
            self.runs, self.total, self.max_failures, self.echo = runs, total, max_failures, echo
            self.done, self.retries, self.start = 0, 0, time.perf_counter()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            elapsed = time.perf_counter() - self.start
            left = elapsed / self.done * (len(self.runs) - self.done)
            result = trial.last_result or {}
            did = "trained" if result.get("trained") else "found trained"
            if result.get("evaluated"):
                did += f", evaluated {result['evaluated']}"
            self.echo(f"[{self.done}/{self.total}] {self.runs[trial.config['run']].what}: "
                      f"{did} ({elapsed / 60:.1f} min so far, about {left / 60:.0f} min left)")

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.retries += 1
            self.echo(f"retry {self.runs[trial.config['run']].what} ({trial.num_failures} "
                      f"of at most {self.max_failures}): {_failure(trial)}; it resumes "
                      "after its last finished epoch")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.echo(f"failed {self.runs[trial.config['run']].what} after "
                      f"{trial.num_failures - 1} retries: {_failure(trial)}")

    return Echo


def run_trials(runs, *, storage, cpus_per_run, gpus_per_run, max_failures, echo=print,
               steps=None):
    """Runs `runs` (`StudyRun`s, every one pending) as Ray Tune trials; needs `connect`.

    Args:
      runs: The runs, each run end to end by one trial.
      storage: Where Ray Tune keeps its records (an absolute path every node mounts).
      cpus_per_run: The CPUs each trial reserves.
      gpus_per_run: The GPUs each trial reserves.
      max_failures: Retries of a trial that fails.
      echo: Prints a progress line.
      steps: The `n` of the `[k/n]` progress lines; defaults to the number of runs.

    Returns:
      `{"trained": how many runs train.py trained, "retries": how many retries ran,
      "failed": ["what: reason (see LOG)", ...]}`.
    """
    # Tune's newer console output prints its own header even when silent; the study
    # prints its own progress lines.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune

    marker = pathlib.Path(storage) / MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{pathlib.Path(storage).parent}\n")
    by_key = {str(run.run_dir): run for run in runs}
    names = {key: f"{run.run_dir.parent.parent.name}.{run.name}" for key, run in by_key.items()}
    trainable = tune.with_resources(
        tune.with_parameters(_trial, runs=by_key, marker=str(marker)), {"cpu": cpus_per_run, "gpu": gpus_per_run}
    )
    progress = _callback_class()(by_key, steps or len(by_key), max_failures, echo)
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search(list(by_key))},
        tune_config=tune.TuneConfig(
            trial_name_creator=lambda trial: names[trial.config["run"]],
            trial_dirname_creator=lambda trial: names[trial.config["run"]],
        ),
        run_config=tune.RunConfig(
            name=time.strftime("tune-%Y%m%d-%H%M%S"),
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[progress],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    trained, failed = 0, []
    for result in grid:
        run = by_key[result.config["run"]]
        if result.error is not None:
            failed.append(f"{run.what}: {_reason(str(result.error))} (log: {run.log})")
        elif (result.metrics or {}).get("trained"):
            trained += 1
    return {"trained": trained, "retries": progress.retries, "failed": failed}


def shutdown():
    import ray

    ray.shutdown()
