"""export: checkpoint -> a self-contained bundle; logs and registers it as an MLflow pyfunc model.

Inputs:  CHECKPOINT, RUN_FILE, dvc.lock (logged as an artifact for provenance).
Outputs: OUT/ (model.safetensors, vocab.json, config.json: see twinhead.predictor).
Params:  export, mlflow.
"""

import argparse
from pathlib import Path

from twinhead.errors import run_main
from twinhead.export import export_bundle, log_pyfunc_model
from twinhead.params import load_params
from twinhead.predictor import Predictor
from twinhead.tracking import Tracker

PARAMS = ("export", "mlflow")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("run_file")
    ap.add_argument("out", help="bundle folder")
    args = ap.parse_args()
    p = load_params(PARAMS)
    export_bundle(args.checkpoint, args.out)
    # Smoke test: the bundle loads on its own and predicts.
    examples = list(p["export"]["examples"])
    preds = Predictor(args.out).predict(examples)
    for pr in preds:
        ents = ", ".join(f"{e['label']}={e['text']!r}" for e in pr["entities"])
        print(f"{pr['text']!r} -> {pr['intent']} ({pr['probability']:.3f}) [{ents}]")

    tracker = Tracker.resume(args.run_file)
    if p["mlflow"].get("enabled", True):
        tracker.log_params({"export": p["export"]})
        uri = log_pyfunc_model(tracker, args.out, p["mlflow"]["registered_model"], examples, preds)
        for f in ("dvc.lock", "params.yaml"):
            tracker.log_artifact(Path(f))
        tracker.finish()
        if uri:
            print(f"MLflow: registered {uri} (alias 'candidate'), run {tracker.run_id}")
    return 0


if __name__ == "__main__":
    run_main(main)
