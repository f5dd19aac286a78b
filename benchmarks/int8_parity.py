"""The int8 export (export.quantize: int8) beside the float32 bundle it comes from, on a processed split.

Usage: python benchmarks/int8_parity.py [--bundle models/export] [--processed data/processed] [--split test]

Quantizes a temp copy of the bundle (twinhead.export.add_onnx), scores both through Predictor's onnx backend
the way the evaluate stage does (twinhead.evaluate.evaluate: processed tokens and raw text), and prints each
metric side by side, then how many sentences' intent or tags changed, and how many change again when the
int8 model sees each sentence alone (dynamic quantization scales activations by each call's range, so a
sentence's result can depend on the batch it is in).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from twinhead.errors import run_main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/export")
    ap.add_argument("--processed", default="data/processed")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    from twinhead.evaluate import evaluate
    from twinhead.export import add_onnx
    from twinhead.predictor import Predictor
    from twinhead.preprocess import load_split

    df = load_split(args.processed, args.split)
    with tempfile.TemporaryDirectory(prefix="twinhead-int8-") as tmp:
        int8 = Path(tmp) / "int8"
        add_onnx(args.bundle, int8, quantize="int8")
        results = {name: evaluate(Predictor(b, backend="onnx"), df, args.batch_size)
                   for name, b in (("float32", args.bundle), ("int8", int8))}
        texts = [" ".join(t) for t in df["tokens"]]
        preds = {name: Predictor(b, backend="onnx").predict(texts, args.batch_size)
                 for name, b in (("float32", args.bundle), ("int8", int8))}
        alone = Predictor(int8, backend="onnx")
        alone = [alone.predict([t])[0] for t in texts]
    keys = ["intent_accuracy", "slot_f1", "sentence_accuracy", "raw_intent_accuracy", "raw_slot_f1",
            "raw_sentence_accuracy", "intent_ece"]
    print(f"{args.bundle} on {args.processed} {args.split} ({len(df)} sentences), onnx backend\n")
    print("| metric | float32 | int8 | int8 - float32 (points) |")
    print("|---|---|---|---|")
    for k in keys:
        a, b = results["float32"].summary.get(k), results["int8"].summary.get(k)
        if a is not None and b is not None:
            print(f"| {k} | {a * 100:.2f} | {b * 100:.2f} | {(b - a) * 100:+.2f} |")
    f, q = preds["float32"], preds["int8"]
    intents = sum(x["intent"] != y["intent"] for x, y in zip(f, q))
    tags = sum(x["tags"] != y["tags"] for x, y in zip(f, q))
    print(f"\nraw text: {intents} of {len(f)} intents and {tags} tag sequences differ from the float32 model's")
    # dynamic quantization scales activations by each call's range: a sentence's result depends on its batch
    intents = sum(x["intent"] != y["intent"] for x, y in zip(q, alone))
    tags = sum(x["tags"] != y["tags"] for x, y in zip(q, alone))
    print(f"int8, each sentence alone against in batches of {args.batch_size}: {intents} intents and {tags} tag "
          "sequences differ")
    return 0


if __name__ == "__main__":
    run_main(main)
