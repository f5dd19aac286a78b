"""GPU benchmark: training and prediction speed and test metrics, fp32 against bf16 autocast, on one device.

Usage: python benchmarks/gpu.py [--data data/raw/snips] [--device auto] [--epochs 8] [--out DIR]
(benchmarks/gpu.sh sets up the data and runs this.)

Preprocesses the dataset in memory, then for each precision trains params.yaml's model with its train section,
except: `--epochs` epochs exactly (early stopping off, so both precisions train as long), no calibration, the
given device. Reports, per precision: training sentences/s and words/s (the median over the epochs of the
per-epoch figures train() logs), prediction sentences/s on the test split (the best epoch's weights, under the
same precision; after a warm-up pass), the test intent accuracy / slot F1 / sentence accuracy, and on CUDA the
host-device syncs counted by torch.cuda.set_sync_debug_mode over 20 training steps (0 expected) and the dtype
the LSTM ran in. Prints the device name and writes everything to DIR/gpu.json (DIR: --out, else $OUT, else
benchmarks/results).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from twinhead.checkpoint import build_model  # noqa: E402
from twinhead.inference import predict_mapped  # noqa: E402
from twinhead.metrics import summary  # noqa: E402
from twinhead.model import ModelConfig  # noqa: E402
from twinhead.params import BaseConfig, load_config  # noqa: E402
from twinhead.preprocess import PreprocessConfig, preprocess  # noqa: E402
from twinhead.train import TrainConfig, TrainData, autocast, new_state, resolve_device, train, train_step  # noqa: E402
from twinhead.vocab import build_vocabs  # noqa: E402

SECTIONS = {"base": BaseConfig, "preprocess": PreprocessConfig, "model": ModelConfig, "train": TrainConfig}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def count_syncs(model, data: TrainData, tcfg: TrainConfig, device: torch.device, steps: int = 20) -> dict:
    """Host-device syncs in `steps` training steps (after 3 warm-up steps), as torch.cuda.set_sync_debug_mode
    reports them, and the dtype of the LSTM's output under this precision."""
    state = new_state(model, tcfg, 1, seed=0)
    model.train()
    seen = []
    hook = model.lstm.register_forward_hook(lambda m, i, out: seen.append(str(out[0].data.dtype)))
    gen = torch.Generator().manual_seed(0)
    batches = data.batches(tcfg.batch_size, gen)[: steps + 3]
    syncs = None
    for k, idx in enumerate(batches):
        if k == 3 and device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.set_sync_debug_mode("warn")
            syncs = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            measure = bool(tcfg.conflict_every) and (k + 1) % tcfg.conflict_every == 0 and len(tcfg.tasks) > 1
            train_step(state, data.batch(idx, device, tcfg.word_dropout, gen), tcfg, measure)
        if syncs is not None:
            syncs += sum("synchroniz" in str(w.message) for w in caught)
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("default")
    hook.remove()
    return {"host_syncs_in_training_steps": syncs, "sync_check_steps": steps if syncs is not None else 0,
            "lstm_dtype": seen[-1] if seen else None}


def timed_predict(model, vocabs, df, batch_size: int, device: torch.device, precision: str):
    with autocast(device, precision):
        predict_mapped(model, vocabs, df.iloc[: min(len(df), 2 * batch_size)], batch_size)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = predict_mapped(model, vocabs, df, batch_size)  # its results come back to the host: synced
        return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/raw/snips", help="dataset folder (BIO folder or JSONL format)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:<index>")
    ap.add_argument("--epochs", type=int, default=8, help="epochs per precision (early stopping off)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"),
                    help="folder for gpu.json (default: $OUT, else benchmarks/results)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args()
    p = load_config(SECTIONS, args.params)
    mcfg, seed = p["model"], p["base"].seed
    device = resolve_device(args.device)
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version() if device.type == 'cuda' else None}", flush=True)

    t0 = time.perf_counter()
    frames, _, _, _ = preprocess(args.data, None, p["preprocess"], seed)
    tr, dev, test = frames["train"], frames["dev"], frames["test"]
    vocabs = build_vocabs(tr["words"], tr["intent"], tr["word_tags"])
    print(f"{args.data}: {len(tr)} train / {len(dev)} dev / {len(test)} test sentences "
          f"(preprocessed in {time.perf_counter() - t0:.1f}s)", flush=True)

    results = {}
    for precision in args.precisions:
        tcfg = dataclasses.replace(p["train"], epochs=args.epochs, patience=0, calibrate=False, device=args.device,
                                   precision=precision, nproc=1)
        res = train(tr, dev, vocabs, mcfg, tcfg, seed, progress=False)
        model = build_model(res.model_config.to_dict(), vocabs).to(device)
        model.load_state_dict(res.best_state)
        (intents, _, tags), seconds = timed_predict(model, vocabs, test, tcfg.eval_batch_size, device, precision)
        gold = [model.canonical_label(i) for i in test["intent"]]
        scores, _, _ = summary(gold, intents, [list(t) for t in test["tags"]], tags)
        fresh = build_model(res.model_config.to_dict(), vocabs).to(device)
        checks = count_syncs(fresh, TrainData(tr, vocabs, res.model_config, fresh.intent_targets), tcfg, device)
        results[precision] = {
            "train_sentences_per_s": statistics.median(r["train_sentences_per_s"] for r in res.history),
            "train_words_per_s": statistics.median(r["train_words_per_s"] for r in res.history),
            "epoch_seconds": [round(r["seconds"], 2) for r in res.history],
            "predict_sentences_per_s": len(test) / seconds,
            "best_epoch": res.best_epoch,
            **{f"test_{k}": scores[k] for k in ("intent_accuracy", "slot_f1", "sentence_accuracy")},
            **checks,
        }

    report = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
              "data": args.data, "epochs": args.epochs, "deterministic": p["train"].deterministic,
              "batch_size": p["train"].batch_size, "results": results}
    cols = ["train_sentences_per_s", "train_words_per_s", "predict_sentences_per_s", "test_intent_accuracy",
            "test_slot_f1", "test_sentence_accuracy", "host_syncs_in_training_steps", "lstm_dtype"]
    print(f"\n{name}: {args.epochs} epochs per precision, batch {p['train'].batch_size}")
    print(f"{'':24s}" + "".join(f"{pr:>12s}" for pr in results))
    for c in cols:
        cells = []
        for pr in results:
            v = results[pr][c]
            cells.append(f"{v:12.4f}" if isinstance(v, float) and v < 10 else
                         f"{v:12.0f}" if isinstance(v, float) else f"{v!s:>12s}")
        print(f"{c:24s}" + "".join(cells))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
