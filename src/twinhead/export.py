"""Export a checkpoint as a self-contained bundle (see twinhead.bundle for the layout)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from twinhead import fileio
from twinhead.bundle import BUNDLE_FORMAT, CONFIG, ONNX, TASKS, VOCAB, WEIGHTS, write_manifest
from twinhead.checkpoint import load_checkpoint
from twinhead.errors import TwinheadError
from twinhead.params import Name, section

EXAMPLES = ["play the new album by the beatles on spotify", "will it rain tomorrow in paris"]


@section
class ExportConfig:
    # smoke test after export, and the MLflow input example
    examples: Annotated[list[Name], Field(min_length=1)] = dataclasses.field(default_factory=lambda: list(EXAMPLES))
    # also write model.onnx, which the Predictor runs in ONNX Runtime when installed (`twinhead[fast]`)
    onnx: bool = True
    # int8: model.onnx's LSTMs and matrix products in int8 (ONNX Runtime dynamic quantization): faster on the
    # CPU; a few tags in a thousand sentences may differ (evaluate scores the quantized model). none: float32
    quantize: Literal["none", "int8"] = "none"

    def __post_init__(self):
        if self.quantize != "none" and not self.onnx:
            raise ValueError(f"quantize: {self.quantize} quantizes model.onnx: it needs onnx: true")


def export_bundle(checkpoint: str | Path, out_dir: str | Path, onnx: bool = False, quantize: str = "none") -> dict:
    """Write weights (safetensors), vocab, config, with `onnx` model.onnx (twinhead.fast.build_onnx; with
    quantize="int8" its int8 version) and, last, the manifest of their hashes; returns the config."""
    from safetensors.torch import save_file

    model, vocabs, ckpt = load_checkpoint(checkpoint)
    from twinhead.fast import onnx_gap  # torch only: no onnx package needed to ask

    gap = onnx_gap(model.cfg) if onnx else None
    if gap:
        # An encoder option under study should not fail the export: the Predictor runs the torch backend.
        print(f"export: model.onnx not written: the ONNX graph does not cover {gap} (the Predictor runs torch)",
              file=sys.stderr)
    onnx_bytes = onnx_model(model, quantize) if onnx and not gap else None
    with fileio.atomic_dir(out_dir) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
        lists = vocabs.to_lists()
        (tmp / VOCAB).write_text(json.dumps(lists, ensure_ascii=False), encoding="utf-8")
        cfg = {
            "format": BUNDLE_FORMAT,
            "model_config": ckpt["model_config"],
            "preprocess": ckpt["preprocess"],
            "sizes": {k: len(v) for k, v in lists.items()},
            "intents": lists["intents"],
            "slot_types": sorted({t[2:] for t in lists["tags"] if t != "O"}),
            "tasks": ckpt.get("tasks", list(TASKS)),  # the heads that were trained
            "trained": {k: ckpt[k] for k in ("best_epoch", "dev_scores", "device") if k in ckpt},
            # A checkpoint written without calibration (train.calibrate: false) predicts unscaled probabilities.
            "calibration": ckpt.get("calibration") or {"temperature": 1.0, "fitted_on": None},
        }
        if onnx_bytes is not None:
            (tmp / ONNX).write_bytes(onnx_bytes)
            cfg["onnx"] = onnx_entry(quantize)
        fileio.write_json(tmp / CONFIG, cfg)
        write_manifest(tmp)
    return cfg


def onnx_entry(quantize: str) -> dict:
    """config.json's "onnx": the file, its opset and, when quantized, how."""
    from twinhead.fast import ONNX_OPSET

    return {"file": ONNX, "opset": ONNX_OPSET, **({"quantized": quantize} if quantize != "none" else {})}


def quantize_onnx(model_bytes: bytes) -> bytes:
    """The graph with its LSTM and MatMul weights in int8 and activations quantized per call
    (onnxruntime.quantization.quantize_dynamic: DynamicQuantizeLSTM, MatMulInteger)."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="twinhead-quantize-") as d:
        src, dst = Path(d) / "model.onnx", Path(d) / "model.int8.onnx"
        src.write_bytes(model_bytes)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def onnx_model(model, quantize: str = "none") -> bytes:
    """model.onnx's bytes (quantize="int8": quantize_onnx's); needs the onnx package (twinhead[fast])."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        raise TwinheadError("params.yaml: export.onnx: true needs the onnx package: pip install 'twinhead[fast]' "
                            "(or set export.onnx: false)")
    from twinhead.fast import build_onnx, onnx_gap

    if onnx_gap(model.cfg):
        raise TwinheadError(f"model.onnx: the ONNX graph does not cover {onnx_gap(model.cfg)}; the bundle predicts "
                            "through torch")
    graph = build_onnx(model)
    return quantize_onnx(graph) if quantize == "int8" else graph


def add_onnx(bundle: str | Path, out_dir: str | Path, quantize: str = "none") -> dict:
    """A copy of an exported bundle with model.onnx added or replaced (what export.onnx: true and
    export.quantize write); returns the copy's config."""
    import shutil

    from twinhead.bundle import MANIFEST, verify_bundle
    from twinhead.predictor import Predictor

    bundle = Path(bundle)
    verify_bundle(bundle)
    model = Predictor(bundle, backend="torch").model
    onnx_bytes = onnx_model(model, quantize)
    with fileio.atomic_dir(out_dir) as tmp:
        for path in bundle.iterdir():
            if path.name not in (MANIFEST, ONNX):
                shutil.copy(path, tmp / path.name)
        (tmp / ONNX).write_bytes(onnx_bytes)
        cfg = json.loads((tmp / CONFIG).read_text(encoding="utf-8"))
        cfg["onnx"] = onnx_entry(quantize)
        fileio.write_json(tmp / CONFIG, cfg)
        write_manifest(tmp)
    return cfg


def log_pyfunc_model(tracker, bundle: str | Path, registered_name: str, example_texts: list[str],
                     example_output: list[dict]) -> str | None:
    """Log the bundle as an MLflow pyfunc model (models-from-code: twinhead/mlflow_model.py, no
    pickle) and register it under `registered_name`. No alias: evaluate moves them once the version's test
    metrics are known (twinhead.tracking)."""

    def _log(client):
        import mlflow
        import pandas as pd
        import safetensors
        import spacy
        import torch
        from mlflow.models import infer_signature

        import twinhead

        mlflow.set_tracking_uri(tracker.uri)
        example = pd.DataFrame({"text": example_texts})
        with mlflow.start_run(run_id=tracker.run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=importlib.util.find_spec("twinhead.mlflow_model").origin,
                artifacts={"bundle": str(Path(bundle).resolve())},
                code_paths=[str(Path(twinhead.__file__).parent)],
                # params: `top_k` can be passed at predict time (and in a served model's request)
                signature=infer_signature(example, example_output, params={"top_k": 3}),
                input_example=example,
                registered_model_name=registered_name,
                # Explicit, so MLflow does not load the model in a subprocess to infer them.
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"safetensors=={safetensors.__version__}", f"spacy=={spacy.__version__}",
                                  f"mlflow=={mlflow.__version__}", f"pandas=={pd.__version__}"],
            )
        return f"models:/{registered_name}/{info.registered_model_version}"

    return tracker.call(_log, "the model (and its registry version)")
