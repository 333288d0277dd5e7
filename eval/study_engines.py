"""The engines of a study: its runs one after another here, or as Ray Tune trials.

Both run each run with `StudyRun` (eval/study_runs.py) and write the same files.
"""

RAY_FLAGS = ("ray_address", "gpus_per_run", "max_failures")  # only --engine=ray uses them


# Engines ----------------------------------------------------------------------------


def engine_settings(fv):
    """The engine's flags, checked: `{"engine", "address", "cpus", "gpus", "max_failures"}`.

    Raises:
      ValueError: A flag of the Ray engine with the local one, or a fraction of GPUs
        above 1 (one line naming the flag).
    """
    if fv.engine == "local":
        given = [name for name in RAY_FLAGS if fv[name].present]
        if given:
            raise ValueError(f"flag --{given[0]}: only with --engine=ray")
        return dict(engine="local", address=None, cpus=fv.cpus_per_run or 0, gpus=0.0,
                    max_failures=0)
    gpus = fv.gpus_per_run
    if gpus > 1 and gpus != int(gpus):
        raise ValueError(
            f"flag --gpus_per_run={gpus:g}: a whole number of GPUs, or a fraction below 1 "
            "(runs that share a GPU)"
        )
    if fv.ray_address is not None:
        from eval import ray_engine

        ray_engine.parse_address(fv.ray_address)
    return dict(engine="ray", address=fv.ray_address, cpus=fv.cpus_per_run or 1,
                gpus=gpus, max_failures=fv.max_failures)


def connect(engine):
    """The Ray engine's cluster, started or joined (a line that describes it), or None
    for the local engine.

    Raises:
      ValueError: One line: Ray missing, the cluster unreachable or too small.
    """
    if engine["engine"] != "ray":
        return None
    from eval import ray_engine

    return ray_engine.connect(engine["address"], engine["cpus"], engine["gpus"])


def train_and_evaluate(regime, progress):
    """The local engine, one regime: trains every run, then evaluates each.

    Returns:
      How many runs train.py trained.
    """
    trained = 0
    for run in regime["runs"]:
        started = progress.step(f"train {run.what}")
        needed = run.train()
        trained += needed
        progress.finish(started, needed)
    for run in regime["runs"] if regime["evals"] else ():
        started = progress.step(f"evaluate {run.what}")
        progress.finish(started, bool(run.evaluate()))
    return trained


def on_ray(regimes, engine, cluster, progress, directory):
    """The Ray engine: every run that is not complete, one Ray Tune trial each.

    Returns:
      `ray_engine.run_trials`'s summary (`{"trained", "retries", "failed"}`) and
      `"unfinished"`: the runs still not complete.
    """
    from eval import ray_engine

    runs = [run for regime in regimes for run in regime["runs"]]
    for run in runs:  # a damaged result is healed before it is judged complete
        run.heal()
    todo = ray_engine.pending(runs)
    for run in runs:
        if run not in todo:
            run.train()  # complete: copies its results to --results_dir if they are not there
    print(f"Ray: {cluster}; {len(todo)} of {len(runs)} runs to do, each "
          f"{engine['cpus']} CPU(s) and {engine['gpus']:g} GPU(s), retried up to "
          f"{engine['max_failures']} times", flush=True)
    summary = {"trained": 0, "retries": 0, "failed": []}
    try:
        if todo:
            progress.total += len(todo)
            summary = ray_engine.run_trials(
                todo, storage=directory / "ray", cpus_per_run=engine["cpus"],
                gpus_per_run=engine["gpus"], max_failures=engine["max_failures"],
                echo=lambda line: print(line, flush=True), steps=progress.total,
            )
            progress.done += len(todo)
    finally:
        ray_engine.shutdown()
    summary["unfinished"] = ray_engine.pending(todo)  # failed, or the study was stopped
    return summary
