"""evaluate: checkpoint + processed test split -> metrics, per-class details, errors, confusion.

Inputs:  CHECKPOINT, PROCESSED/<split>.parquet, RUN_FILE (the MLflow run train opened).
Outputs: OUT/eval.json (summary: DVC metrics), OUT/eval_details.json (per-intent and per-slot-type
         P/R/F1), OUT/errors.jsonl (every wrong sentence), OUT/intent_confusion.json (records of
         actual/predicted, DVC confusion plot), OUT/intent_confusion.png.
Params:  evaluate, mlflow.
"""

import argparse
from pathlib import Path

from twinhead import fileio
from twinhead.checkpoint import load_checkpoint
from twinhead.errors import run_main
from twinhead.evaluate import confusion_png, evaluate
from twinhead.params import load_params
from twinhead.preprocess import load_split
from twinhead.tracking import Tracker

PARAMS = ("evaluate", "mlflow")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("processed")
    ap.add_argument("run_file")
    ap.add_argument("out", help="metrics folder")
    args = ap.parse_args()
    p = load_params(PARAMS)
    cfg = p["evaluate"]
    model, vocabs, _ = load_checkpoint(args.checkpoint)
    df = load_split(args.processed, cfg["split"])
    res = evaluate(model, vocabs, df, cfg["batch_size"])
    out = Path(args.out)
    fileio.write_json(out / "eval.json", res.summary)
    fileio.write_json(out / "eval_details.json", res.details)
    fileio.write_jsonl(out / "errors.jsonl", res.errors)
    fileio.write_json(out / "intent_confusion.json", res.confusion, indent=None)
    confusion_png(res.confusion, out / "intent_confusion.png", f"intent confusion ({cfg['split']})")

    tracker = Tracker.resume(args.run_file)
    if p["mlflow"].get("enabled", True):
        tracker.log_params({"evaluate": cfg})
        tracker.log_metrics({k: v for k, v in res.summary.items() if k != "sentences"})
        for name in ("eval.json", "eval_details.json", "errors.jsonl", "intent_confusion.png"):
            tracker.log_artifact(out / name, "evaluation")
    s = res.summary
    print(f"{cfg['split']}: intent accuracy {s['intent_accuracy']:.4f}, slot F1 {s['slot_f1']:.4f}, "
          f"sentence accuracy {s['sentence_accuracy']:.4f} ({len(res.errors)} wrong sentences of {s['sentences']})")
    return 0


if __name__ == "__main__":
    run_main(main)
