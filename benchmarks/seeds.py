"""One configuration over several seeds, as DVC experiments: mean ± std of dev and test metrics.

Usage (from the project root, with the project's environment):
    .venv/bin/python benchmarks/seeds.py --name crf-snips --dataset snips --set model.tag_decoder=crf
    .venv/bin/python benchmarks/seeds.py --name crf-snips --no-run      # only collect (e.g. after a crash)
    .venv/bin/python benchmarks/seeds.py --from-json crf.json            # the table again, e.g. for the README

Each seed is one `dvc exp run --queue -n NAME-s<seed> -S ...` (so it shows in `dvc exp show` and, since
the train stage logs to MLflow, in MLflow); the queue runs with one worker. Dev scores are those of the
checkpoint training kept (the train_log.csv row with the best `train.early_stop_metric`): compare and
select on them. Test scores (metrics/eval.json) are reported beside them, never selected on.
Experiments that already succeeded under the same name on this commit are collected, not re-run
(--force re-runs them). A failed seed is listed with the end of its log and the table says "2 of 3".
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from twinhead.errors import TwinheadError, run_main

METRICS = ("intent_accuracy", "slot_f1", "sentence_accuracy")  # dev columns of train_log.csv, keys of eval.json
COLUMNS = (*(f"dev_{m}" for m in METRICS), *(f"test_{m}" for m in METRICS), "train_minutes")
LABELS = {"intent_accuracy": "intent acc", "slot_f1": "slot F1", "sentence_accuracy": "sentence acc"}
DATASETS = {"snips": "data/raw/snips", "atis": "data/raw/atis"}
# Where the pipeline (dvc.yaml) writes them; read back from each experiment's commit.
EVAL_FILE = "metrics/eval.json"
LOG_FILE = "metrics/train_log.csv"
TRAIN_FILE = "metrics/train.json"  # the train stage's summary (checkpoint averaging: the kept weights' dev scores)
PENDING = ("Queued", "Running")
LOG_TAIL = 12  # lines of a failed experiment's log shown in the report
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a git ref component DVC accepts as -n


# ---------------------------------------------------------------- pure parts (unit-tested) ---------

@dataclass
class Planned:
    """One seed of one configuration: the experiment to queue or collect."""

    name: str  # experiment name, e.g. crf-snips-s1
    seed: int
    sets: list[str]  # every -S key=value, base.seed and data.path included
    config: str = ""  # row label in the table
    dataset: str = ""


@dataclass
class Experiment:
    """One experiment as `dvc exp show --json` lists it (the newest one when a name repeats)."""

    name: str
    rev: str
    state: str  # success | failed | queued | running
    timestamp: str
    params: dict[str, Any]  # params.yaml, flattened: {"train.lr": 0.003, ...}
    test: dict[str, float]  # metrics/eval.json
    task_id: str | None = None  # queue task, for `dvc queue logs`
    train: dict[str, float] = field(default_factory=dict)  # metrics/train.json


@dataclass
class Run:
    """The outcome of one planned seed: values (COLUMNS) when it succeeded, else why not."""

    name: str
    seed: int
    values: dict[str, float | None] | None
    rev: str | None = None
    state: str = "success"
    log_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def dataset_path(dataset: str) -> str:
    """`snips`/`atis` -> the DVC-tracked folder; anything else is taken as a path."""
    return DATASETS.get(dataset, dataset)


def dataset_label(dataset: str | None) -> str:
    if not dataset:
        return "params.yaml"
    return dataset if dataset in DATASETS else Path(dataset).name


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise TwinheadError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (it becomes a git ref)")
    return name


def check_sets(sets: list[str]) -> list[str]:
    for s in sets:
        key, sep, _ = s.partition("=")
        if not sep or not key.strip() or " " in key:
            raise TwinheadError(f"--set {s!r}: expected key=value, e.g. train.lr=0.001")
    return sets


def seed_plan(name: str, sets: list[str], seeds: list[int], data_path: str | None,
              config: str = "", dataset: str = "") -> list[Planned]:
    """One Planned per seed, named NAME-s<seed>, with the sets, the dataset and the seed."""
    check_name(name)
    keys = {s.partition("=")[0].lstrip("+") for s in check_sets(sets)}
    if "base.seed" in keys:
        raise TwinheadError("--set base.seed=...: the seeds come from --seeds")
    if data_path and "data.path" in keys:
        raise TwinheadError("--set data.path=... and --dataset: give the dataset once")
    tail = [f"data.path={data_path}"] if data_path else []
    return [Planned(f"{name}-s{seed}", seed, [*sets, *tail, f"base.seed={seed}"],
                    config or name, dataset or dataset_label(data_path)) for seed in seeds]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(want: Any, got: Any) -> bool:
    """A -S value against the recorded param; numbers compare as numbers (`1e-3` == 0.001)."""
    if want == got:
        return True
    try:
        return math.isclose(float(want), float(got))
    except (TypeError, ValueError):
        return str(want) == str(got)


def mismatches(params: dict[str, Any], sets: list[str]) -> list[str]:
    """The -S key=value pairs an experiment's recorded params disagree with (`key: wanted X, has Y`)."""
    out = []
    for s in sets:
        key, _, raw = s.partition("=")
        key = key.lstrip("+")
        try:
            want = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            want = raw
        got = params.get(key, "<missing>")
        if not _same(want, got):
            out.append(f"{key}: wanted {want!r}, has {got!r}")
    return out


def parse_exp_show(shown: list[dict]) -> dict[str, Experiment]:
    """`dvc exp show --json` -> experiment name -> its newest Experiment (a name re-queued after a
    failure appears twice: the newer one counts)."""
    found: dict[str, Experiment] = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            executor = exp.get("executor") or {}
            for rev in (exp.get("revs") or [])[:1]:
                name = rev.get("name") or exp.get("name")
                if not name:
                    continue
                data = rev.get("data") or {}
                state = executor.get("state") or "success"
                if rev.get("error") and state == "success":
                    state = "failed"
                params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
                test = ((data.get("metrics") or {}).get(EVAL_FILE) or {}).get("data") or {}
                train = ((data.get("metrics") or {}).get(TRAIN_FILE) or {}).get("data") or {}
                e = Experiment(name, rev.get("rev", ""), state, data.get("timestamp") or "9999", flatten(params),
                               test, (executor.get("local") or {}).get("task_id"), train)
                if name not in found or e.timestamp > found[name].timestamp:
                    found[name] = e
    return found


def parse_exp_ls(text: str) -> dict[str, set[str]]:
    """`dvc exp ls --all-commits` -> baseline commit -> the names of its experiments. The lines are
    "<commit>:" and, under it, "\t<sha> [<name>]" (or "\t<name>" from older DVC)."""
    held: dict[str, set[str]] = {}
    commit = None
    for line in text.splitlines():
        if line.strip() and not line[0].isspace() and line.rstrip().endswith(":"):
            commit = line.strip()[:-1]
            held.setdefault(commit, set())
        elif commit and line.strip():
            item = line.strip()
            held[commit].add(item[item.index("[") + 1 : item.rindex("]")] if item.endswith("]") else item)
    return held


def _number(text: str | None) -> float | None:
    try:
        x = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def dev_from_log(log_csv: str, metric: str = "sentence_accuracy", where: str = LOG_FILE) -> dict[str, Any]:
    """train_log.csv text -> the dev scores of the kept checkpoint, its epoch, and training minutes.

    The kept epoch is the row the train stage marked `selected`; in a log without that column, the first
    epoch with the highest dev `metric` (a later tie does not replace it). Training time is the sum of the
    per-epoch `seconds`. A dev column the run did not log is None."""
    rows = list(csv.DictReader(io.StringIO(log_csv)))
    marked = [r for r in rows if _number(r.get("selected")) == 1]
    if len(marked) == 1:
        rows_for_best = marked
    else:
        rows_for_best = rows
    col = f"dev_{metric}"
    if not rows:
        raise TwinheadError(f"{where}: no epochs logged")
    if col not in rows[0]:
        raise TwinheadError(f"{where}: no column {col} (train.early_stop_metric is {metric})")
    best, best_score = None, -math.inf
    for row in rows_for_best:
        score = _number(row[col])
        if score is not None and score > best_score:
            best, best_score = row, score
    if best is None:
        raise TwinheadError(f"{where}: column {col} has no number")
    secs = [_number(r.get("seconds")) for r in rows]
    return {**{f"dev_{m}": _number(best.get(f"dev_{m}")) for m in METRICS},
            "train_minutes": sum(secs) / 60 if secs and None not in secs else None,
            "best_epoch": int(float(best["epoch"])), "epochs": len(rows)}


def run_values(exp: Experiment, log_csv: str) -> tuple[dict[str, float | None], dict[str, Any]]:
    """COLUMNS of one successful experiment (dev from its train log, test from its eval.json), and
    the kept epoch / epochs run."""
    metric = str(exp.params.get("train.early_stop_metric", "sentence_accuracy"))
    dev = dev_from_log(log_csv, metric, f"{exp.name}:{LOG_FILE}")
    if _number(exp.train.get("average_kept")) == 1:  # train.average_last kept the mean of the weights: its dev
        dev.update({f"dev_{m}": _number(exp.train.get(f"average_dev_{m}")) for m in METRICS})
    values = {**{f"test_{m}": _number(exp.test.get(m)) for m in METRICS}, **dev}
    return {c: values[c] for c in COLUMNS}, {"best_epoch": dev["best_epoch"], "epochs": dev["epochs"]}


def mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1); std is None below two values."""
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def aggregate(runs: list[Run], config: str, dataset: str, sets: list[str] | None = None) -> dict[str, Any]:
    """One table row: mean ± std over the seeds that succeeded; failed seeds are listed, not dropped."""
    ok = [r for r in runs if r.values is not None]
    stats = {}
    for c in COLUMNS:
        mean, std = mean_std([r.values[c] for r in ok if r.values[c] is not None])  # type: ignore[index]
        stats[c] = {"mean": mean, "std": std}
    return {
        "config": config, "dataset": dataset, "sets": sets or [], "n": len(ok), "planned": len(runs),
        "metrics": stats,
        "runs": [{"name": r.name, "seed": r.seed, "rev": r.rev, "values": r.values, **r.extra} for r in ok],
        "failed": [{"name": r.name, "seed": r.seed, "state": r.state, "log_tail": r.log_tail}
                   for r in runs if r.values is None],
    }


def format_cell(mean: float | None, std: float | None, scale: float = 100.0, digits: int = 2) -> str:
    """`97.43 ± 0.21` (fractions shown as percentages); no ± when there is one value; `—` for none."""
    if mean is None:
        return "—"
    cell = f"{mean * scale:.{digits}f}"
    return cell if std is None else f"{cell} ± {std * scale:.{digits}f}"


def column_label(col: str) -> str:
    if col == "train_minutes":
        return "train min"
    split, _, metric = col.partition("_")
    return f"{split} {LABELS[metric]}"


def format_n(row: dict) -> str:
    return str(row["n"]) if row["n"] == row["planned"] else f"{row['n']} of {row['planned']}"


def format_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """Markdown table: configuration, dataset, seeds (n), then each column as mean ± std."""
    head = ["configuration", "dataset", "n", *(column_label(c) for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["config"], row["dataset"], format_n(row)]
        for c in columns:
            m = row["metrics"][c]
            cells.append(format_cell(m["mean"], m["std"], 1.0, 1) if c == "train_minutes"
                         else format_cell(m["mean"], m["std"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_failures(rows: list[dict]) -> str:
    out = []
    for row in rows:
        for f in row["failed"]:
            out.append(f"FAILED {f['name']} ({f['state']}):")
            out.extend("    " + line for line in f["log_tail"].splitlines())
    return "\n".join(out)


def parse_queue_status(text: str) -> tuple[dict[str, tuple[str, str]], tuple[int, int]]:
    """`dvc queue status` -> {task id: (name, status)} and (active, idle) workers. Columns are read at
    the header's offsets: a name may be blank and the date has spaces."""
    tasks: dict[str, tuple[str, str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Task") and "Status" in line:
            at = [line.index(h) for h in ("Name", "Created", "Status")]
            for row in lines[i + 1:]:
                if not row.strip():
                    break
                tasks[row[:at[0]].strip()] = (row[at[0]:at[1]].strip(), row[at[2]:].strip())
            break
    m = re.search(r"Worker status: (\d+) active, (\d+) idle", text)
    return tasks, ((int(m[1]), int(m[2])) if m else (0, 0))


# ---------------------------------------------------------------- DVC and git ----------------------

class Dvc:
    """DVC and git in the project root, with this interpreter's bin folder first on PATH: the stage
    commands call `python` from PATH, and it must be the environment that has twinhead."""

    def __init__(self, cwd: str | os.PathLike = ".") -> None:
        self.cwd = Path(cwd)
        bin_dir = Path(sys.executable).parent
        if not shutil.which("dvc", path=str(bin_dir)):
            raise TwinheadError(f"no dvc next to {sys.executable}: run this with the project's environment "
                                "(.venv/bin/python benchmarks/...; `make setup` creates it)")
        self.env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(["dvc", *args], check)

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(["git", *args], check)

    def start_worker(self) -> None:
        """`dvc queue start -j 1`. Its output goes to a file, not a pipe: the worker it leaves running
        inherits the descriptors, and reading a pipe would wait until the worker exits."""
        with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
            code = subprocess.run(["dvc", "queue", "start", "-j", "1"], cwd=self.cwd, env=self.env,
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            out.seek(0)
            if code != 0:
                raise TwinheadError("`dvc queue start -j 1` failed: " + " / ".join(out.read().splitlines()[-6:]))

    def _run(self, cmd: list[str], check: bool) -> subprocess.CompletedProcess:
        res = subprocess.run(cmd, cwd=self.cwd, env=self.env, capture_output=True, text=True)
        if check and res.returncode != 0:
            tail = (res.stderr.strip() or res.stdout.strip()).splitlines()[-6:]
            raise TwinheadError(f"`{' '.join(cmd)}` failed: " + " / ".join(tail))
        return res

    def queue_status(self) -> tuple[dict[str, tuple[str, str]], tuple[int, int]]:
        return parse_queue_status(self("queue", "status").stdout)

    def experiments(self, all_commits: bool = False, names: Iterable[str] | None = None) -> dict[str, Experiment]:
        """The experiments of HEAD's commit; with all_commits, of every commit, or, given `names`, of HEAD and
        the commits that hold a finished experiment of one of those names (`dvc exp ls -A`, under a second):
        `dvc exp show --all-commits` reads every experiment there is, over 5 minutes with a few hundred."""
        if not all_commits:
            revs = []
        elif names is None:
            revs = ["--all-commits"]
        else:
            held = parse_exp_ls(self("exp", "ls", "--all-commits").stdout)
            want = set(names)
            revs = [a for c in sorted(c for c, ns in held.items() if ns & want) for a in ("--rev", c)]
            revs = revs and ["--rev", "HEAD", *revs]
        return parse_exp_show(json.loads(self("exp", "show", "--json", *revs).stdout))

    def log_tail(self, exp: Experiment) -> str:
        res = self("queue", "logs", exp.task_id or exp.name, check=False)
        text = (res.stdout + res.stderr).strip()
        return "\n".join(text.splitlines()[-LOG_TAIL:]) or "(no log)"


def queue_plan(dvc: Dvc, plan: list[Planned], force: bool = False, all_commits: bool = False) -> dict[str, str]:
    """Queue the planned experiments not already done (on HEAD's commit, or any with all_commits); returns
    {task id: name} of those to wait for. All or nothing: if one cannot be queued, those queued here are
    removed again."""
    found = dvc.experiments(all_commits, [p.name for p in plan])
    tasks_before, _ = dvc.queue_status()
    wait = {t: n for t, (n, s) in tasks_before.items() if s in PENDING and n in {p.name for p in plan}}
    done = {p.name for p in plan if (e := found.get(p.name)) is not None and e.state == "success" and not force}
    for p in plan:  # every clash is found before anything is queued
        bad = mismatches(found[p.name].params, p.sets) if p.name in done else []
        if bad:
            raise TwinheadError(f"experiment {p.name} exists with other params ({'; '.join(bad)}): "
                                "choose another --name, or --force to replace it")
    queued: list[str] = []
    for p in plan:
        if p.name in done:
            print(f"{p.name}: done already ({found[p.name].rev[:7]}), collected as is", flush=True)
            continue
        if p.name in wait.values():
            print(f"{p.name}: already in the queue", flush=True)
            continue
        args = ["exp", "run", "--queue", "-n", p.name, *(["-f"] if force else [])]
        for s in p.sets:
            args += ["-S", s]
        res = dvc(*args, check=False)
        if res.returncode != 0:
            _unqueue(dvc, tasks_before, queued)
            msg = " / ".join((res.stderr.strip() or res.stdout.strip()).splitlines()[-4:])
            raise TwinheadError(f"could not queue {p.name} (nothing of this plan was queued): {msg}")
        queued.append(p.name)
    tasks_after, _ = dvc.queue_status()
    wait.update({t: n for t, (n, s) in tasks_after.items() if t not in tasks_before and n in queued})
    return wait


def _unqueue(dvc: Dvc, before: dict, names: list[str]) -> None:
    if names:
        after, _ = dvc.queue_status()
        ids = [t for t, (n, _) in after.items() if t not in before and n in names]
        if ids:
            dvc("queue", "remove", *ids, check=False)


def wait_queue(dvc: Dvc, tasks: dict[str, str], poll: float = 30.0) -> None:
    """Start one queue worker (2 cores: one run at a time) and print progress until `tasks` are done."""
    if not tasks:
        return
    dvc.start_worker()
    try:
        _follow(dvc, tasks, poll)
    except KeyboardInterrupt:
        print("\nthe queue goes on in the background (`dvc queue status`); collect later with --no-run",
              file=sys.stderr)
        raise


def _follow(dvc: Dvc, tasks: dict[str, str], poll: float, patience: float = 90.0) -> None:
    t0, seen = time.time(), {}
    last_worker = t0  # a worker takes a few seconds to register after `queue start`
    while True:
        status, (active, idle) = dvc.queue_status()
        states = {t: status.get(t, ("", "Unknown"))[1] for t in tasks}
        for t, s in states.items():
            if seen.get(t) != s:
                seen[t] = s
                done = sum(x not in PENDING for x in states.values())
                failed = sum(x == "Failed" for x in states.values())
                print(f"[{time.strftime('%H:%M:%S')}] {tasks[t]}: {s} ({done}/{len(tasks)} done, "
                      f"{failed} failed, {(time.time() - t0) / 60:.1f} min)", flush=True)
        pending = [s for s in states.values() if s in PENDING]
        if not pending:
            return
        if active + idle:
            last_worker = time.time()
        elif time.time() - last_worker > patience:
            if "Queued" not in pending:
                print("tasks still show Running but no queue worker is alive: collecting what there is",
                      flush=True)
                return
            dvc.start_worker()  # the worker went away (killed, machine restarted)
            last_worker = time.time()
        time.sleep(poll)


def collect(dvc: Dvc, plan: list[Planned], found: dict[str, Experiment]) -> list[Run]:
    """Each planned seed's values from its experiment, or the reason it has none."""
    runs = []
    for p in plan:
        exp = found.get(p.name)
        if exp is None:
            runs.append(Run(p.name, p.seed, None, state="missing",
                            log_tail="not in `dvc exp show` on this commit (--all-commits looks at all)"))
        elif exp.state != "success" or not exp.test:
            runs.append(Run(p.name, p.seed, None, exp.rev, exp.state, dvc.log_tail(exp)))
        elif bad := mismatches(exp.params, p.sets):
            runs.append(Run(p.name, p.seed, None, exp.rev, "other params", "; ".join(bad)))
        else:
            log = dvc.git("show", f"{exp.rev}:{LOG_FILE}").stdout
            values, extra = run_values(exp, log)
            runs.append(Run(p.name, p.seed, values, exp.rev, extra=extra))
    return runs


def check_data(plan: list[Planned], root: Path) -> None:
    """A queued run reads DVC-tracked data from the local cache: it must have been pulled."""
    for path in sorted({s.partition("=")[2] for p in plan for s in p.sets if s.startswith("data.path=")}):
        if not (root / path).exists():
            raise TwinheadError(f"data.path={path}: not in the workspace; run `dvc pull {path}.dvc` first "
                                "(queued runs read the data from the local DVC cache)")


def seed_major(plans: list[list[Planned]]) -> list[Planned]:
    """Every plan's first seed, then every second seed, ...: a partial run still fills whole tables. An
    experiment two plans share (the same name) is run once, where it first comes."""
    longest = max((len(ps) for ps in plans), default=0)
    order = [ps[i] for i in range(longest) for ps in plans if i < len(ps)]
    first: dict[str, Planned] = {}
    for p in order:
        first.setdefault(p.name, p)
    return list(first.values())


def run_and_collect(plans: dict[Any, list[Planned]], run: bool = True, force: bool = False, poll: float = 30.0,
                    all_commits: bool = False, cwd: str | os.PathLike = ".") -> list[dict]:
    """Queue and run (unless run=False) every plan, then one aggregated row per plan, in order."""
    dvc = Dvc(cwd)
    if run:
        flat = seed_major(list(plans.values()))
        check_data(flat, Path(cwd))
        wait_queue(dvc, queue_plan(dvc, flat, force, all_commits), poll)
    found = dvc.experiments(all_commits, [p.name for ps in plans.values() for p in ps])
    rows = []
    for ps in plans.values():
        sets = [s for s in ps[0].sets if not s.startswith("base.seed=")]
        rows.append(aggregate(collect(dvc, ps, found), ps[0].config, ps[0].dataset, sets))
    return rows


def write_json(path: str, obj: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_json(path: str, key: str) -> Any:
    """`key` of a JSON file this script (or ablation.py) wrote with --json."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TwinheadError(f"{path}: not a --json output of the benchmarks (no {key!r}): {e}") from None


def add_run_options(ap: argparse.ArgumentParser, json_help: str, from_json_help: str) -> None:
    """The options seeds.py and ablation.py share: seeds, running vs collecting, and the JSON rows."""
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--no-run", action="store_true", help="only collect the experiments that exist")
    ap.add_argument("--force", action="store_true", help="re-run experiments that succeeded already")
    ap.add_argument("--all-commits", action="store_true",
                    help="find and collect the experiments of every commit, not only HEAD's")
    ap.add_argument("--poll", type=float, default=30.0, help="seconds between queue checks")
    ap.add_argument("--json", help=json_help)
    ap.add_argument("--from-json", help=from_json_help)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", help="experiments are named NAME-s<seed>")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a param, as `dvc exp run -S`")
    ap.add_argument("--dataset", help="snips, atis or a dataset folder (default: data.path in params.yaml)")
    add_run_options(ap, "also write the row(s) here", "only print the table of a file --json wrote (no DVC)")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = read_json(args.from_json, "rows")
    elif not args.name:
        ap.error("--name is required (or --from-json)")
    else:
        label = dataset_label(args.dataset)
        plan = seed_plan(args.name, args.set, args.seeds, dataset_path(args.dataset) if args.dataset else None,
                         args.name, label)
        rows = run_and_collect({(args.name, label): plan}, not args.no_run, args.force, args.poll, args.all_commits)
    print(format_table(rows))
    failures = format_failures(rows)
    if failures:
        print(failures)
    if args.json:
        write_json(args.json, {"rows": rows})
    return 1 if failures else 0


if __name__ == "__main__":
    run_main(main)
