"""train: processed splits + vocabularies -> the best checkpoint, a per-epoch log, an MLflow run.

Inputs:  PROCESSED/{train,dev}.parquet + meta.json, VOCAB/*.json.
Outputs: CHECKPOINT (state_dict + model config + vocabularies + preprocessing settings + the intent
         temperature fitted on dev, unless train.calibrate is false),
         LOG (metrics/train_log.csv: one row per epoch), --summary (metrics/train.json), RUN_FILE (the
         MLflow run id for the later stages). The resumable training state lives in --state (not a DVC output).
Params:  base, model, train, mlflow.

With train.nproc > 1 this stage starts itself again under torchrun (torch.distributed.run) on that many local
processes; started by torchrun already (a cluster: see README, "Training on torchrun"), it joins the process
group. Rank 0 alone writes the outputs and the MLflow run.
"""

import argparse
import subprocess
import sys
from pathlib import Path

# The library of the tree this stage runs in (a `dvc exp run --queue` copy holds its own src/), not whatever
# twinhead the environment has installed: an experiment runs the code it was queued with.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from twinhead.errors import check_environment, run_main  # pure Python: importable from any python

check_environment()

import pandas as pd

from twinhead import distributed, fileio
from twinhead.checkpoint import build_model, save_checkpoint
from twinhead.model import ModelConfig
from twinhead.params import BaseConfig, as_dict, flatten, load_config
from twinhead.preprocess import load_split
from twinhead.text import TextPipeline
from twinhead.tracking import MlflowConfig, Tracker, run_tags
from twinhead.train import METRICS, TrainConfig, fit_calibration, resolve_device, train
from twinhead.vocab import Vocabs

SECTIONS = {"base": BaseConfig, "model": ModelConfig, "train": TrainConfig, "mlflow": MlflowConfig}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("processed")
    ap.add_argument("vocab")
    ap.add_argument("checkpoint")
    ap.add_argument("log")
    ap.add_argument("run_file")
    ap.add_argument("--state", default="models/resume/state.pt", help="resumable training state")
    ap.add_argument("--summary", default="metrics/train.json",
                    help="best epoch, epochs run, pretrained-vector coverage (a DVC metric)")
    args = ap.parse_args()
    p = load_config(SECTIONS)
    tcfg = p["train"]
    if tcfg.nproc > 1 and not distributed.launched():
        cmd = distributed.torchrun_command(tcfg.nproc, __file__, sys.argv[1:])
        print(f"train.nproc={tcfg.nproc}: {' '.join(cmd)}", flush=True)
        return subprocess.run(cmd).returncode
    distributed.check_nproc(tcfg.nproc)
    device = resolve_device(tcfg.device, distributed.env_world())
    with distributed.process_group(device) as world:
        return run(args, p, world)


def average_summary(average: dict) -> dict:
    """train.json's record of checkpoint averaging: whether the mean was kept, how many epochs it spans, and
    the dev scores of the best single epoch beside the mean's (the paired comparison behind the choice)."""
    return {"average_kept": int(average["kept"]), "average_epochs": len(average["epochs"]),
            **{f"average_{k}": v for k, v in average["dev_scores"].items() if k[4:] in METRICS},
            **{f"best_epoch_{k}": v for k, v in average["best_epoch_dev_scores"].items() if k[4:] in METRICS}}


def run(args, p: dict, world: distributed.World) -> int:
    mcfg, tcfg = p["model"], p["train"]
    device = str(resolve_device(tcfg.device, world))
    if not world.main:  # the other ranks train alongside rank 0 and write nothing
        train(load_split(args.processed, "train"), load_split(args.processed, "dev"), Vocabs.load(args.vocab),
              mcfg, tcfg, p["base"].seed, state_path=args.state)
        return 0
    meta = fileio.read_json(f"{args.processed}/meta.json")
    vocab_meta = fileio.read_json(f"{args.vocab}/meta.json")
    vocabs = Vocabs.load(args.vocab)
    train_df, dev_df = load_split(args.processed, "train"), load_split(args.processed, "dev")

    tracker = Tracker.start(p["mlflow"], "train")
    tracker.write_run_file(args.run_file)
    tracker.set_tags({**run_tags(device), "train_processes": str(world.size)})
    # The params that produced this run's inputs (recorded upstream) and this stage's own.
    params = {**meta["params"], **vocab_meta["params"], **as_dict(p)}
    tracker.log_params(params)
    tracker.join_cross_validation(flatten(params))  # a fold of benchmarks/cv.py: under its parent run
    tracker.log_input(train_df, meta["dataset"], "training")

    print(f"training on {device}" + (f" and {world.size - 1} more process(es)" if world.size > 1 else "")
          + f": {len(train_df)} train / {len(dev_df)} dev sentences", flush=True)
    res = train(train_df, dev_df, vocabs, mcfg, tcfg, p["base"].seed, state_path=args.state,
                on_epoch=lambda row: tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"},
                                                         step=row["epoch"]))
    if res.resumed_from:  # this run continued a killed one: its metrics start after that epoch
        tracker.set_tags({"resumed_from_epoch": str(res.resumed_from)})
    if res.truncated:
        print(f"WARNING: {res.truncated} training sentences longer than model.max_len={mcfg.max_len} were "
              "truncated", flush=True)
    model = build_model(res.model_config.to_dict(), vocabs)
    model.load_state_dict(res.best_state)
    calibration = {"temperature": 1.0, "fitted_on": None}  # train.calibrate off, or no intent head
    if tcfg.calibrate and "intent" in tcfg.tasks:
        calibration = fit_calibration(model, vocabs, dev_df, tcfg.eval_batch_size)
    # The text pipeline's settings travel with the model, so prediction reads text as preprocess did.
    preprocess = {**TextPipeline.from_settings(meta, f"{args.processed}/meta.json").settings(),
                  "remove_stopwords": meta["remove_stopwords"]}
    save_checkpoint(args.checkpoint, model, vocabs, preprocess,
                    {"best_epoch": res.best_epoch, "dev_scores": res.best_scores, "device": res.device,
                     "tasks": list(tcfg.tasks), "loss_rule": tcfg.loss_rule, "loss_rule_state": res.rule_state,
                     "calibration": calibration,
                     **({"averaged_epochs": res.average["epochs"]} if res.average and res.average["kept"] else {})})
    Path(args.state).unlink(missing_ok=True)  # only needed to recover from a crash
    log = pd.DataFrame(res.history)
    log["selected"] = (log["epoch"] == res.best_epoch).astype(int)  # the epoch whose weights were kept
    with fileio.atomic_path(args.log) as tmp:
        log.to_csv(tmp, index=False, float_format="%.6g")
    speed = log[["train_sentences_per_s", "train_words_per_s"]].median()  # of the epochs (all processes)
    summary = {"best_epoch": res.best_epoch, "epochs": len(res.history), "processes": world.size,
               "median_train_sentences_per_s": float(speed["train_sentences_per_s"]),
               "median_train_words_per_s": float(speed["train_words_per_s"]),
               "intent_temperature": calibration["temperature"],
               **{k: v for k, v in calibration.items() if k.startswith("dev_intent_ece")},
               **({"vectors_coverage": res.vectors["coverage"], "vectors_found": res.vectors["found"]}
                  if res.vectors else {}),
               **(average_summary(res.average) if res.average else {})}
    fileio.write_json(args.summary, summary)
    tracker.log_metrics({**summary, **{f"best_{k}": v for k, v in res.best_scores.items()}})
    tracker.log_artifact(args.log)
    print(f"best epoch {res.best_epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.best_scores.items()))
    if calibration["fitted_on"]:
        print(f"intent temperature {calibration['temperature']:.4f} (fitted on dev): dev intent ECE "
              f"{calibration['dev_intent_ece_uncalibrated']:.4f} -> {calibration['dev_intent_ece']:.4f}")
    return 0


if __name__ == "__main__":
    run_main(main)
