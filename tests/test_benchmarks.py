"""benchmarks/seeds.py and benchmarks/ablation.py: aggregation, tables, dev-based selection on hand-checked
inputs; one end-to-end run through `dvc exp run --queue` in a tiny repo."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest

from benchmarks import ablation, cv, seeds
from tests.conftest import ROOT, env_with_venv, make_tiny_repo, run
from twinhead.errors import TwinheadError

LOG = """epoch,train_loss,dev_intent_accuracy,dev_slot_f1,dev_sentence_accuracy,lr,seconds
1,2.0,0.90,0.70,0.60,0.003,10.0
2,1.0,0.95,0.80,0.80,0.002,20.0
3,0.5,0.97,0.85,0.75,0.001,30.0
4,0.4,0.96,0.83,0.80,0.0,60.0
"""


def values(i: float, s: float = 0.0) -> dict[str, float]:
    """COLUMNS with intent accuracy `i`, slot F1 `s`, the rest fixed."""
    return {"dev_intent_accuracy": i, "dev_slot_f1": s, "dev_sentence_accuracy": 0.5,
            "test_intent_accuracy": i - 0.01, "test_slot_f1": s, "test_sentence_accuracy": 0.4, "train_minutes": 2.0}


def stat(mean, std=None) -> dict:
    return {"mean": mean, "std": std}


def row(config: str, dataset: str, **metrics: dict) -> dict:
    return {"config": config, "dataset": dataset, "n": 3, "planned": 3, "failed": [],
            "metrics": {c: metrics.get(c, stat(None)) for c in seeds.COLUMNS}}


# --- train_log.csv -> dev score of the kept checkpoint, training time ---

def test_dev_scores_are_those_of_the_first_best_epoch_and_time_is_the_sum():
    got = seeds.dev_from_log(LOG, "sentence_accuracy")
    # epochs 2 and 4 tie at 0.80: training kept epoch 2 (a tie does not replace the best)
    assert got["best_epoch"] == 2 and got["epochs"] == 4
    assert (got["dev_intent_accuracy"], got["dev_slot_f1"], got["dev_sentence_accuracy"]) == (0.95, 0.80, 0.80)
    assert got["train_minutes"] == pytest.approx(120 / 60)
    by_slots = seeds.dev_from_log(LOG, "slot_f1")
    assert by_slots["best_epoch"] == 3 and by_slots["dev_sentence_accuracy"] == 0.75


def test_the_epoch_marked_selected_wins_over_the_first_best():
    # training breaks a tie on sentence accuracy by the other metrics and marks the epoch it kept
    log = ("epoch,dev_intent_accuracy,dev_slot_f1,dev_sentence_accuracy,seconds,selected\n"
           "1,0.2,0.0,0.0,3,0\n2,0.7,0.3,0.0,3,1\n")
    got = seeds.dev_from_log(log, "sentence_accuracy")
    assert got["best_epoch"] == 2 and got["dev_intent_accuracy"] == 0.7


def test_dev_columns_a_run_did_not_log_are_none():
    log = "epoch,dev_intent_accuracy,dev_slot_f1,dev_sentence_accuracy,seconds\n1,0.9,,nan,5\n2,0.92,,nan,5\n"
    got = seeds.dev_from_log(log, "intent_accuracy")
    assert got["best_epoch"] == 2 and got["dev_intent_accuracy"] == 0.92
    assert got["dev_slot_f1"] is None and got["dev_sentence_accuracy"] is None


def test_a_log_without_the_selection_column_names_file_and_column():
    with pytest.raises(TwinheadError, match=r"x-s1:metrics/train_log.csv: no column dev_slot_f1"):
        seeds.dev_from_log("epoch,dev_intent_accuracy,seconds\n1,0.9,3\n", "slot_f1", "x-s1:metrics/train_log.csv")
    with pytest.raises(TwinheadError, match="no epochs logged"):
        seeds.dev_from_log("epoch,dev_sentence_accuracy,seconds\n")


# --- mean ± std over seeds, with a failed seed ---

def test_aggregate_means_the_seeds_that_succeeded_and_lists_the_failed_one():
    runs = [seeds.Run("c-s1", 1, values(0.90, 0.80)), seeds.Run("c-s2", 2, None, "abc", "failed", "Traceback\nBoom"),
            seeds.Run("c-s3", 3, values(0.94, 0.86))]
    r = seeds.aggregate(runs, "c", "snips", ["train.lr=0.01"])
    assert (r["n"], r["planned"]) == (2, 3)
    m = r["metrics"]["dev_intent_accuracy"]
    assert m["mean"] == pytest.approx(0.92)
    assert m["std"] == pytest.approx(math.sqrt((0.02 ** 2 + 0.02 ** 2) / 1))  # sample std, n-1 = 1
    assert r["metrics"]["dev_slot_f1"]["mean"] == pytest.approx(0.83)
    assert r["metrics"]["train_minutes"] == {"mean": 2.0, "std": 0.0}
    assert r["failed"] == [{"name": "c-s2", "seed": 2, "state": "failed", "log_tail": "Traceback\nBoom"}]
    assert [x["name"] for x in r["runs"]] == ["c-s1", "c-s3"]
    table = seeds.format_table([r])
    assert "| c | snips | 2 of 3 | 92.00 ± 2.83 | 83.00 ± 4.24 |" in table
    assert "FAILED c-s2 (failed):\n    Traceback\n    Boom" == seeds.format_failures([r])


def test_one_seed_has_no_std_and_no_seed_has_no_mean():
    one = seeds.aggregate([seeds.Run("c-s1", 1, values(0.9)), seeds.Run("c-s2", 2, None, state="missing")], "c", "atis")
    assert one["metrics"]["dev_intent_accuracy"] == {"mean": 0.9, "std": None}
    none = seeds.aggregate([seeds.Run("c-s1", 1, None, state="failed")], "c", "atis")
    assert none["n"] == 0 and none["metrics"]["test_slot_f1"] == {"mean": None, "std": None}
    lines = seeds.format_table([one, none]).splitlines()
    assert lines[0] == ("| configuration | dataset | n | dev intent acc | dev slot F1 | dev sentence acc | "
                        "test intent acc | test slot F1 | test sentence acc | train min |")
    assert lines[2] == "| c | atis | 1 of 2 | 90.00 | 0.00 | 50.00 | 89.00 | 0.00 | 40.00 | 2.0 |"
    assert lines[3] == "| c | atis | 0 of 1 | — | — | — | — | — | — | — |"


# --- dev-based selection and the sharing comparison ---

def test_selection_uses_the_dev_mean_over_datasets_never_test():
    rows = [
        # A wins on snips dev and on test everywhere, B wins on the dev mean: B is selected
        row("A", "snips", dev_sentence_accuracy=stat(0.90), test_sentence_accuracy=stat(0.99)),
        row("A", "atis", dev_sentence_accuracy=stat(0.80), test_sentence_accuracy=stat(0.99)),
        row("B", "snips", dev_sentence_accuracy=stat(0.88), test_sentence_accuracy=stat(0.50)),
        row("B", "atis", dev_sentence_accuracy=stat(0.86), test_sentence_accuracy=stat(0.50)),
        row("C", "snips", dev_sentence_accuracy=stat(0.99)),  # no ATIS result: cannot be compared
        row("C", "atis"),
    ]
    sel = ablation.select_on_dev(rows)
    assert sel["best"] == "B" and sel["datasets"] == ["atis", "snips"]
    assert sel["scores"] == {"A": pytest.approx(0.85), "B": pytest.approx(0.87)}
    assert ablation.format_selection(sel) == ("Best on dev (dev sentence acc, mean over atis, snips): B 87.00 "
                                              "(others: A 85.00)")
    assert ablation.select_on_dev([row("C", "snips")]) is None


def test_sharing_compares_each_task_on_its_own_metric_against_the_seed_std():
    rows = [
        row("joint", "snips", dev_intent_accuracy=stat(0.980, 0.005), dev_slot_f1=stat(0.950, 0.010),
            test_intent_accuracy=stat(0.970, 0.002), test_slot_f1=stat(0.940, 0.01)),
        row("intent-only", "snips", dev_intent_accuracy=stat(0.970, 0.004), test_intent_accuracy=stat(0.975, 0.003)),
        row("tags-only", "snips", dev_slot_f1=stat(0.955, 0.020), test_slot_f1=stat(0.930, 0.01)),
    ]
    intent, tags = ablation.sharing(rows)
    assert (intent["task"], intent["metric"], tags["metric"]) == ("intent", "intent_accuracy", "slot_f1")
    assert intent["diff_dev"] == pytest.approx(0.010) and intent["std"] == 0.005
    assert intent["exceeds_std"] is True and intent["verdict"] == "gains from sharing"
    assert intent["diff_test"] == pytest.approx(-0.005)  # reported beside, not used for the verdict
    assert tags["diff_dev"] == pytest.approx(-0.005) and tags["std"] == 0.020
    assert tags["exceeds_std"] is False and tags["verdict"] == "within seed std"
    lines = ablation.format_sharing([intent, tags]).splitlines()
    assert lines[2] == ("| intent | snips | intent acc | 98.00 ± 0.50 | 97.00 ± 0.40 | +1.00 | 0.50 | "
                        "gains from sharing | 97.00 ± 0.20 | 97.50 ± 0.30 | -0.50 |")


def test_sharing_says_when_it_cannot_judge():
    rows = [row("joint", "atis", dev_intent_accuracy=stat(0.9, None), dev_slot_f1=stat(0.8, 0.01)),
            row("intent-only", "atis", dev_intent_accuracy=stat(0.8, None))]
    intent, tags = ablation.sharing(rows)
    assert intent["verdict"] == "no seed std (n<2)" and intent["exceeds_std"] is None
    assert tags["verdict"] == "missing runs" and tags["diff_dev"] is None


def test_a_gain_within_the_std_is_no_gain_and_a_loss_beyond_it_is_a_loss():
    rows = [row("joint", "atis", dev_intent_accuracy=stat(0.91, 0.02), dev_slot_f1=stat(0.90, 0.01)),
            row("intent-only", "atis", dev_intent_accuracy=stat(0.90, 0.01)),
            row("tags-only", "atis", dev_slot_f1=stat(0.93, 0.02))]
    intent, tags = ablation.sharing(rows)
    assert intent["diff_dev"] == pytest.approx(0.01) and intent["verdict"] == "within seed std"
    assert tags["diff_dev"] == pytest.approx(-0.03) and tags["verdict"] == "loses from sharing"


# --- plans, params, DVC's outputs ---

def test_seed_plan_names_each_seed_and_adds_dataset_and_seed():
    plan = seeds.seed_plan("crf", ["model.tag_decoder=crf"], [1, 2], "data/raw/atis")
    assert [p.name for p in plan] == ["crf-s1", "crf-s2"]
    assert plan[1].sets == ["model.tag_decoder=crf", "data.path=data/raw/atis", "base.seed=2"]
    assert (plan[0].config, plan[0].dataset) == ("crf", "atis")
    assert seeds.seed_plan("x", ["data.path=data/raw/mine"], [3], None)[0].sets == ["data.path=data/raw/mine",
                                                                                   "base.seed=3"]
    with pytest.raises(TwinheadError, match="--name 'a b'"):
        seeds.seed_plan("a b", [], [1], None)
    with pytest.raises(TwinheadError, match="--set 'train.lr': expected key=value"):
        seeds.seed_plan("x", ["train.lr"], [1], None)
    with pytest.raises(TwinheadError, match="the seeds come from --seeds"):
        seeds.seed_plan("x", ["base.seed=7"], [1], None)
    with pytest.raises(TwinheadError, match="give the dataset once"):
        seeds.seed_plan("x", ["data.path=data/raw/mine"], [1], "data/raw/atis")


def test_ablation_plans_are_queued_seed_by_seed():
    plans = ablation.plans_for("heads", ["snips", "atis"], [1, 2])
    assert list(plans) == [("softmax", "snips"), ("crf", "snips"), ("softmax", "atis"), ("crf", "atis")]
    assert plans[("crf", "atis")][0].sets == ["model.tag_decoder=crf", "data.path=data/raw/atis", "base.seed=1"]
    order = [p.name for p in seeds.seed_major(list(plans.values()))]
    assert order == ["heads-softmax-snips-s1", "heads-crf-snips-s1", "heads-softmax-atis-s1", "heads-crf-atis-s1",
                     "heads-softmax-snips-s2", "heads-crf-snips-s2", "heads-softmax-atis-s2", "heads-crf-atis-s2"]


def test_runs_two_groups_share_are_queued_once_and_collected_by_both():
    heads = ablation.plans_for("heads", ["atis"], [1])
    schedule = ablation.plans_for("schedule", ["atis"], [1])
    assert schedule[("plateau", "atis")][0].name == heads[("softmax", "atis")][0].name == "heads-softmax-atis-s1"
    order = [p.name for p in seeds.seed_major([*heads.values(), *schedule.values()])]
    assert order == ["heads-softmax-atis-s1", "heads-crf-atis-s1", "schedule-cosine-15-atis-s1"]


def test_cross_validation_plans_one_experiment_per_fold_with_one_seed():
    plan = cv.fold_plan("cv", "atis", 3, ["train.loss_rule=sum"], seed=42)
    assert [p.name for p in plan] == ["cv-atis-k3-f0", "cv-atis-k3-f1", "cv-atis-k3-f2"]
    assert plan[2].sets == ["train.loss_rule=sum", "data.path=data/raw/atis", "data.cv_folds=3", "data.cv_fold=2",
                            "base.seed=42"]
    assert {p.config for p in plan} == {"cv (3-fold)"}
    with pytest.raises(TwinheadError, match="--folds 2: at least 3"):
        cv.fold_plan("cv", "atis", 2, [], 1)
    with pytest.raises(TwinheadError, match="come from --folds"):
        cv.fold_plan("cv", "atis", 3, ["data.cv_fold=1"], 1)


def test_mismatches_compares_values_as_dvc_parses_them():
    params = {"train.lr": 0.001, "train.tasks": ["intent"], "model.tag_decoder": "crf", "base.seed": 1}
    assert seeds.mismatches(params, ["train.lr=1e-3", "train.tasks=[intent]", "model.tag_decoder=crf",
                                     "base.seed=1"]) == []
    assert seeds.mismatches(params, ["train.tasks=[intent, tags]", "train.loss_rule=sum"]) == [
        "train.tasks: wanted ['intent', 'tags'], has ['intent']", "train.loss_rule: wanted 'sum', has '<missing>'"]


SHOW = [
    {"rev": "workspace", "name": None, "data": {}, "experiments": None},
    {"rev": "1e24b8c", "name": "main", "data": {}, "experiments": [
        {"executor": {"state": "success", "local": {"task_id": "2ed491b0"}}, "name": "x-s1",
         "revs": [{"rev": "e383fbb", "name": "x-s1", "error": None, "data": {
             "timestamp": "2026-11-30T04:53:02",
             "params": {"params.yaml": {"data": {"base": {"seed": 1}, "train": {"early_stop_metric": "slot_f1"}}}},
             "metrics": {"metrics/eval.json": {"data": {"intent_accuracy": 0.9, "slot_f1": 0.8,
                                                        "sentence_accuracy": 0.7}}}}}]},
        {"executor": {"state": "failed", "local": {"task_id": "f94015b1"}}, "name": "x-s1",
         "revs": [{"rev": "f94015b", "name": "x-s1", "error": {"msg": "Experiment run failed"}, "data": {
             "timestamp": "2026-11-30T04:51:05", "params": {},
             "metrics": {"metrics/eval.json": {"error": {"type": "FileNotFoundError"}}}}}]},
        {"executor": None, "name": "x-s2",
         "revs": [{"rev": "aee3708", "name": "x-s2", "error": {"msg": "Experiment run failed"},
                   "data": {"timestamp": "2026-11-30T04:51:07"}}]},
    ]},
]


def test_exp_show_keeps_the_newest_experiment_of_a_name():
    found = seeds.parse_exp_show(SHOW)
    assert set(found) == {"x-s1", "x-s2"}
    x1 = found["x-s1"]  # re-queued after a failure: the later success counts
    assert (x1.rev, x1.state, x1.task_id) == ("e383fbb", "success", "2ed491b0")
    assert x1.params == {"base.seed": 1, "train.early_stop_metric": "slot_f1"}
    assert found["x-s2"].state == "failed" and found["x-s2"].test == {}
    vals, extra = seeds.run_values(x1, LOG)
    assert extra == {"best_epoch": 3, "epochs": 4}  # selected on this experiment's slot_f1
    assert vals == {"dev_intent_accuracy": 0.97, "dev_slot_f1": 0.85, "dev_sentence_accuracy": 0.75,
                    "test_intent_accuracy": 0.9, "test_slot_f1": 0.8, "test_sentence_accuracy": 0.7,
                    "train_minutes": pytest.approx(2.0)}
    # checkpoint averaging kept the mean of the weights (metrics/train.json): dev is the mean's, not an epoch's
    x1.train = {"average_kept": 1, "average_dev_intent_accuracy": 0.98, "average_dev_slot_f1": 0.86,
                "average_dev_sentence_accuracy": 0.76}
    vals, _ = seeds.run_values(x1, LOG)
    assert (vals["dev_intent_accuracy"], vals["dev_slot_f1"], vals["dev_sentence_accuracy"]) == (0.98, 0.86, 0.76)
    x1.train["average_kept"] = 0
    assert seeds.run_values(x1, LOG)[0]["dev_sentence_accuracy"] == 0.75


def test_queue_status_is_read_at_the_header_columns():
    text = ("Task     Name        Created       Status\n"
            "f94015b  t-s1        04:51 AM      Failed\n"
            "753b005              Nov 29, 2026  Running\n"
            "2ed491b  long-name   04:52 AM      Queued\n"
            "\nWorker status: 1 active, 0 idle\n")
    tasks, workers = seeds.parse_queue_status(text)
    assert tasks == {"f94015b": ("t-s1", "Failed"), "753b005": ("", "Running"), "2ed491b": ("long-name", "Queued")}
    assert workers == (1, 0)
    assert seeds.parse_queue_status("No experiment tasks in the queue.\n\nWorker status: 0 active, 0 idle\n") == (
        {}, (0, 0))


def test_saved_json_prints_the_same_tables_without_dvc(tmp_path, capsys):
    rows = [row("joint", "snips", dev_intent_accuracy=stat(0.98, 0.005)),
            row("intent-only", "snips", dev_intent_accuracy=stat(0.97, 0.004))]
    rows[1]["failed"] = [{"name": "tasks-intent-only-snips-s3", "seed": 3, "state": "failed", "log_tail": "oom"}]
    seeds.write_json(str(tmp_path / "sub" / "a.json"), {"groups": {"tasks": {"rows": rows}}})
    assert ablation.main(["--from-json", str(tmp_path / "sub" / "a.json")]) == 1  # a seed failed
    printed = capsys.readouterr().out
    assert printed.startswith("## tasks\n\n" + seeds.format_table(rows))
    assert "| intent | snips | intent acc | 98.00 ± 0.50 | 97.00 ± 0.40 | +1.00 | 0.50 | gains from sharing |" \
        in printed
    assert "FAILED tasks-intent-only-snips-s3 (failed):\n    oom" in printed
    (tmp_path / "b.json").write_text('{"rows": []}')
    with pytest.raises(TwinheadError, match=r"b.json: not a --json output of the benchmarks \(no 'groups'\)"):
        ablation.main(["--from-json", str(tmp_path / "b.json")])


def test_dvc_outside_the_project_environment_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(TwinheadError, match="no dvc next to .*python: run this with the project's environment"):
        seeds.Dvc()


# --- end to end: queued DVC experiments, a failed seed, the numbers of `dvc exp show` ---

@pytest.mark.e2e
def test_seeds_script_runs_the_queue_and_reports_dvc_exp_show_numbers(tmp_path):
    repo = make_tiny_repo(tmp_path / "repo")
    env = env_with_venv()
    script = [sys.executable, str(ROOT / "benchmarks" / "seeds.py"), "--name", "e2e", "--set", "train.epochs=1",
              "--poll", "2"]
    # seed -1 is refused by params validation: a failed seed, reported with its log
    res = run([*script, "--seeds", "1", "2", "-1", "--json", "out.json"], repo, env, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    out = json.loads((repo / "out.json").read_text())["rows"]
    assert len(out) == 1 and (out[0]["n"], out[0]["planned"]) == (2, 3)
    assert [f["name"] for f in out[0]["failed"]] == ["e2e-s-1"]
    assert "base.seed: input should be greater than or equal to 0" in out[0]["failed"][0]["log_tail"]
    assert "FAILED e2e-s-1 (failed):" in res.stdout and "| e2e | params.yaml | 2 of 3 |" in res.stdout

    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    exps = {e["name"]: e["revs"][0] for b in shown for e in b.get("experiments") or []
            if e["executor"] is None or e["executor"]["state"] == "success"}
    assert {"e2e-s1", "e2e-s2"} <= set(exps)
    by_name = {r["name"]: r for r in out[0]["runs"]}
    for name, seed in (("e2e-s1", 1), ("e2e-s2", 2)):
        rev = exps[name]
        assert rev["data"]["params"]["params.yaml"]["data"]["base"]["seed"] == seed
        assert rev["data"]["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
        test = rev["data"]["metrics"]["metrics/eval.json"]["data"]
        log = run(["git", "show", f"{rev['rev']}:metrics/train_log.csv"], repo, env).stdout.splitlines()
        header, (epoch1,) = log[0].split(","), log[1:]
        dev = dict(zip(header, map(float, epoch1.split(",")), strict=True))
        got = by_name[name]
        assert got["rev"] == rev["rev"]
        for m in seeds.METRICS:
            assert got["values"][f"test_{m}"] == test[m]
            assert got["values"][f"dev_{m}"] == dev[f"dev_{m}"]
        assert got["values"]["train_minutes"] == pytest.approx(dev["seconds"] / 60)
    line = next(x for x in res.stdout.splitlines() if x.startswith("| e2e |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    for k, m in enumerate(seeds.METRICS):
        xs = [exps[n]["data"]["metrics"]["metrics/eval.json"]["data"][m] for n in ("e2e-s1", "e2e-s2")]
        assert out[0]["metrics"][f"test_{m}"]["mean"] == pytest.approx(statistics.mean(xs))
        assert out[0]["metrics"][f"test_{m}"]["std"] == pytest.approx(statistics.stdev(xs))
        assert cells[6 + k] == seeds.format_cell(statistics.mean(xs), statistics.stdev(xs))

    # Each experiment is also an MLflow run named after it.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo}/mlflow.db")
    names = {r.info.run_name for r in client.search_runs([client.get_experiment_by_name("twinhead").experiment_id])}
    assert {"e2e-s1", "e2e-s2"} <= names

    # Collecting again without running gives the same rows (e.g. after the script was interrupted).
    def tasks() -> dict:  # the queue's tasks (the worker line changes as the idle worker exits)
        return seeds.parse_queue_status(run(["dvc", "queue", "status"], repo, env).stdout)[0]

    before = tasks()
    assert len(before) == 3
    again = run([*script, "--seeds", "1", "2", "-1", "--no-run", "--json", "again.json"], repo, env, check=False)
    assert again.returncode == 1
    assert json.loads((repo / "again.json").read_text())["rows"] == out
    assert tasks() == before  # nothing queued

    # On a later commit, --all-commits finds them on the commit they were run on (`dvc exp ls -A`), not HEAD.
    run(["git", "commit", "-q", "--allow-empty", "-m", "later"], repo, env)
    missing = run([*script, "--seeds", "1", "2", "--no-run", "--json", "head.json"], repo, env, check=False)
    assert missing.returncode == 1 and json.loads((repo / "head.json").read_text())["rows"][0]["n"] == 0
    run([*script, "--seeds", "1", "2", "--no-run", "--all-commits", "--json", "moved.json"], repo, env)
    moved = json.loads((repo / "moved.json").read_text())["rows"]
    assert (moved[0]["n"], moved[0]["planned"]) == (2, 2)
    assert moved[0]["runs"] == out[0]["runs"] and moved[0]["metrics"] == out[0]["metrics"]


def test_exp_ls_output_gives_each_commit_its_experiment_names():
    """`dvc exp ls --all-commits` as DVC 3.67 prints it (and without the shas): --all-commits then reads only
    the commits that hold the experiments asked for."""
    text = "a0cdb26:\n\t49fb953 [mpl05-snips-s2]\n\t63763d1 [mpl-snips-s4]\n3f300ae:\n\t730f17b [mpl-atis-s3]\n" \
           "b718a92:\n\tmr03-atis-s4\n"
    assert seeds.parse_exp_ls(text) == {"a0cdb26": {"mpl05-snips-s2", "mpl-snips-s4"}, "3f300ae": {"mpl-atis-s3"},
                                        "b718a92": {"mr03-atis-s4"}}
    calls = []

    class FakeDvc(seeds.Dvc):
        def __init__(self):
            pass

        def __call__(self, *args, check=True):
            calls.append(args)
            out = text if args[:2] == ("exp", "ls") else "[]"
            return subprocess.CompletedProcess(args, 0, out, "")

    FakeDvc().experiments(True, ["mpl-atis-s3", "mr03-atis-s4", "nowhere-s1"])
    assert calls[-1] == ("exp", "show", "--json", "--rev", "HEAD", "--rev", "3f300ae", "--rev", "b718a92")
    FakeDvc().experiments(True, ["nowhere-s1"])
    assert calls[-1] == ("exp", "show", "--json")  # none elsewhere: HEAD's
    FakeDvc().experiments(True)
    assert calls[-1] == ("exp", "show", "--json", "--all-commits")


def test_a_plan_that_clashes_with_a_done_experiment_queues_nothing():
    """An experiment that exists with other params stops the plan before anything is queued (a half-queued
    plan would run without its collection)."""
    plan = seeds.seed_plan("x", ["train.lr=0.01"], [1, 2], None)
    done = seeds.Experiment("x-s2", "abc1234", "success", "", {"train.lr": 0.003, "base.seed": 2}, {})
    calls = []

    class FakeDvc:
        def experiments(self, all_commits, names=None):
            return {"x-s2": done}

        def queue_status(self):
            return {}, (0, 0)

        def __call__(self, *args, check=True):
            calls.append(args)

    with pytest.raises(TwinheadError, match=r"x-s2 exists with other params \(train.lr: wanted 0.01"):
        seeds.queue_plan(FakeDvc(), plan)
    assert calls == []
