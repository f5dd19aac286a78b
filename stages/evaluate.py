"""evaluate: exported bundle + processed split -> metrics, per-class details, errors, confusion.

The model is loaded the way users load it (twinhead.predictor.Predictor on the bundle), and every
sentence is scored twice: on the processed words, and as raw text through Predictor.predict, scored on
character spans (the raw_* keys of eval.json). The numbers are those `twinhead predict` users get.
Inputs:  BUNDLE, PROCESSED/<split>.parquet, RUN_FILE (the MLflow run train opened).
Outputs: OUT/eval.json (summary: DVC metrics), OUT/eval_details.json (per-intent and per-slot-type
         P/R/F1), OUT/errors.jsonl (every wrong sentence), OUT/errors.html (those sentences as a displaCy
         page, gold over predicted), OUT/intent_confusion.json (records of actual/predicted, DVC confusion
         plot), OUT/intent_confusion.png, OUT/slot_f1.png (F1 per slot type), OUT/intent_reliability.png
         (accuracy per confidence bin of the bundle's intent probabilities; ECE in eval.json).
Params:  evaluate, mlflow.
"""

import argparse
import sys
from pathlib import Path

# The library of the tree this stage runs in (a `dvc exp run --queue` copy holds its own src/), not whatever
# twinhead the environment has installed: an experiment runs the code it was queued with.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from twinhead.errors import check_environment, run_main  # pure Python: importable from any python

check_environment()

from twinhead import fileio
from twinhead.calibration import reliability_png
from twinhead.evaluate import EvaluateConfig, confusion_png, evaluate
from twinhead.params import as_dict, load_config
from twinhead.plots import slot_f1_png
from twinhead.predictor import Predictor
from twinhead.preprocess import load_split
from twinhead.render import errors_html
from twinhead.tracking import MlflowConfig, Tracker

SECTIONS = {"evaluate": EvaluateConfig, "mlflow": MlflowConfig}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="exported bundle folder")
    ap.add_argument("processed")
    ap.add_argument("run_file")
    ap.add_argument("out", help="metrics folder")
    args = ap.parse_args()
    p = load_config(SECTIONS)
    cfg = p["evaluate"]
    predictor = Predictor(args.bundle)
    df = load_split(args.processed, cfg.split)
    res = evaluate(predictor, df, cfg.batch_size)
    out = Path(args.out)
    fileio.write_json(out / "eval.json", res.summary)
    fileio.write_json(out / "eval_details.json", res.details)
    fileio.write_jsonl(out / "errors.jsonl", res.errors)
    fileio.write_text(out / "errors.html", errors_html(res.errors))
    fileio.write_json(out / "intent_confusion.json", res.confusion, indent=None)
    confusion_png(res.confusion, out / "intent_confusion.png", f"intent confusion ({cfg.split})")
    slot_f1_png(res.details["slot"]["per_type"], out / "slot_f1.png", f"slot F1 per type ({cfg.split})")
    reliability_png(res.confidence, res.intent_right, out / "intent_reliability.png",
                    f"intent reliability ({cfg.split})")

    tracker = Tracker.resume(args.run_file)
    if p["mlflow"].enabled:
        tracker.log_params({"evaluate": as_dict(cfg)})
        scores = {k: v for k, v in res.summary.items() if k != "sentences"}
        dataset = fileio.read_json(Path(args.processed) / "meta.json")["dataset"]
        tracker.log_input(df, dataset, "evaluation", cfg.split)
        tracker.log_model_metrics(scores, df, dataset, cfg.split)
        tracker.promote(p["mlflow"], scores, dataset)
        for name in ("eval.json", "eval_details.json", "errors.jsonl", "errors.html", "intent_confusion.png",
                     "slot_f1.png"):
            tracker.log_artifact(out / name, "evaluation")
        tracker.log_artifact(out / "intent_reliability.png", "evaluation")
        for f in ("dvc.lock", "params.yaml"):
            tracker.log_artifact(Path(f))
        tracker.finish()
    shown = ("intent_accuracy", "slot_f1", "sentence_accuracy")
    s = res.summary
    print(f"{cfg.split}: " + ", ".join(f"{k} {s[k]:.4f}" for k in shown if k in s)
          + f" ({len(res.errors)} wrong sentences of {s['sentences']}); raw text: "
          + ", ".join(f"{k} {s['raw_' + k]:.4f}" for k in shown if "raw_" + k in s))
    return 0


if __name__ == "__main__":
    run_main(main)
