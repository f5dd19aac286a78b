"""export: checkpoint -> a self-contained bundle; logs and registers it as an MLflow pyfunc model.

Inputs:  CHECKPOINT, RUN_FILE.
Outputs: OUT/ (model.safetensors, vocab.json, config.json, manifest.json, with export.onnx model.onnx: see
         twinhead.bundle).
Params:  export, mlflow.
"""

import argparse
import sys
from pathlib import Path

# The library of the tree this stage runs in (a `dvc exp run --queue` copy holds its own src/), not whatever
# twinhead the environment has installed: an experiment runs the code it was queued with.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from twinhead.errors import check_environment, run_main  # pure Python: importable from any python

check_environment()

from twinhead.export import ExportConfig, export_bundle, log_pyfunc_model
from twinhead.params import as_dict, load_config
from twinhead.predictor import Predictor
from twinhead.tracking import MlflowConfig, Tracker

SECTIONS = {"export": ExportConfig, "mlflow": MlflowConfig}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("run_file")
    ap.add_argument("out", help="bundle folder")
    args = ap.parse_args()
    p = load_config(SECTIONS)
    export_bundle(args.checkpoint, args.out, onnx=p["export"].onnx, quantize=p["export"].quantize)
    # Smoke test: the bundle loads on its own and predicts (with model.onnx: in ONNX Runtime, when installed).
    examples = list(p["export"].examples)
    predictor = Predictor(args.out)
    preds = predictor.predict(examples)
    quantized = (predictor.config.get("onnx") or {}).get("quantized")
    print(f"backend: {predictor.backend}" + (f" ({quantized} model.onnx)" if quantized and predictor.backend == "onnx"
                                              else ""))
    for pr in preds:
        ents = ", ".join(f"{e['label']}={e['text']!r}" for e in pr["entities"])
        intent = f"{pr['intent']} ({pr['probability']:.3f})" if pr["intent"] is not None else "(no intent head)"
        print(f"{pr['text']!r} -> {intent} [{ents}]")

    tracker = Tracker.resume(args.run_file)
    if p["mlflow"].enabled:
        tracker.log_params({"export": as_dict(p["export"])})
        uri = log_pyfunc_model(tracker, args.out, p["mlflow"].registered_model, examples, preds)
        if uri:
            print(f"MLflow: registered {uri}, run {tracker.run_id}; evaluate decides its aliases")
    return 0


if __name__ == "__main__":
    run_main(main)
