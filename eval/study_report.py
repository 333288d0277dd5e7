"""A study's progress lines and written record: each regime's report, the plan's index,
`study.json`, and the copies of reports beside the committed results."""

import pathlib
import time

from gradmask_tf import files


class Progress:
    """`[k/n] what` lines with the elapsed time and an estimate of the time left."""

    def __init__(self, total):
        self.total, self.done, self.worked = total, 0, 0
        self.start, self.spent = time.perf_counter(), 0.0

    def step(self, what):
        elapsed = time.perf_counter() - self.start
        left = ""
        if self.worked:  # steps that were skipped (already done) do not count
            per_step = self.spent / self.worked
            left = f", about {per_step * (self.total - self.done) / 60:.0f} min left"
        print(f"[{self.done + 1}/{self.total}] {what} ({elapsed / 60:.1f} min so far{left})",
              flush=True)
        return time.perf_counter()

    def finish(self, started, did_work):
        self.done += 1
        if did_work:
            self.worked += 1
            self.spent += time.perf_counter() - started


def copy_report(directory, results, figures=True):
    """Copies a report (`report.md` and, with `figures`, its figures) beside the results,
    so that the committed results carry the report they rebuild."""
    for path in [directory / "report.md", *(sorted(directory.glob("*.png")) if figures else [])]:
        if path.is_file():
            files.atomic_write(results / path.name, lambda file, p=path: file.write(p.read_bytes()),
                               binary=True)


def report_regime(regime):
    """`eval.compare`'s report of one regime, from the results where they were copied."""
    from eval import compare

    sources = [
        run.results if run.results is not None and (run.results / files.CONFIG).is_file()
        else run.run_dir
        for run in regime["runs"]
    ]
    compare.report([compare.load_run(path) for path in sources], regime["directory"],
                   regime["primary"])
    if regime["results"] is not None:
        copy_report(regime["directory"], regime["results"])


def write_index(plan, regimes, directory, root):
    """`DIR/report.md` of a plan: its notes, seeds and a link to each regime's report."""
    from eval import plans

    path = pathlib.Path(plan["path"])
    if path.is_absolute() and path.is_relative_to(root):
        path = path.relative_to(root)  # the index is committed: no machine's checkout path
    lines = [f"# Study `{plan['name']}`", "", f"Plan: `{path}`; seeds: "
             f"{', '.join(map(str, plan['seeds']))}.", ""]
    if plan["notes"]:
        lines += [plan["notes"], ""]
    lines += ["| regime | train.py flags | arms | primaries | report |", "|---|---|---|---|---|"]
    for regime, declared in zip(regimes, plan["regimes"]):
        flags_text = " ".join(f"`{a}`" for a in plans.flag_arguments(declared["flags"]))
        lines.append(
            f"| {regime['name']} | {flags_text or '(defaults)'} | {', '.join(declared['arms'])} | "
            f"{', '.join(f'`{p}`' for p in declared['primary']) or '(none)'} | "
            f"[{regime['name']}/report.md]({regime['name']}/report.md) |"
        )
    files.atomic_write_text(directory / "report.md", "\n".join(lines) + "\n")


def write_record(directory, options, engine, summary, trained, started_at, command):
    """`DIR/study.json`: the settings, the command, and what this invocation did."""
    record = directory / "study.json"
    previous = {}
    if record.is_file():
        from eval import result_files
        from eval.study_runs import warn

        try:
            previous = result_files.read_json(record)
        except result_files.DamagedFile as error:
            moved = result_files.move_aside(record)
            warn(f"{record} is damaged ({error}); moved aside to {moved}; its total time "
                 "starts again from this invocation")
    extra = {}
    if engine["engine"] == "ray":
        extra["engine"] = {
            "name": "ray", "address": engine["address"], "cpus_per_run": engine["cpus"],
            "gpus_per_run": engine["gpus"], "max_failures": engine["max_failures"],
            "retries_this_invocation": summary["retries"],
        }
    elapsed = time.perf_counter() - started_at
    settings = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in options.items()}
    files.atomic_write_json(record, {
        "settings": settings,
        "command": command,
        "runs_trained_this_invocation": trained,
        "wall_seconds_this_invocation": elapsed,
        "wall_seconds_total": previous.get("wall_seconds_total", 0.0) + elapsed,
        **extra,
    })
