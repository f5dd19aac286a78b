"""Prediction speed on raw text, twinhead beside spaCy, in one run: words/s, sentences/s, one-sentence latency.

Usage: python benchmarks/predict_speed.py [--bundle models/export] [--spacy-model DIR] [--threads 1,2]
           [--n 10000] [--batch-size 256] [--reps 500] [--data data/raw/snips] [--profile]

Throughput: the test split's texts (seq.in lines joined by spaces: raw text, tokenized by each system)
repeated to --n, in batches of --batch-size (nlp.pipe for spaCy, Predictor.predict for twinhead), one
timed pass after a warm-up pass over the first 1000 texts. Words are whitespace-separated words of the
input. Latency: one 10-word test sentence predicted alone --reps times after 50 warm-up calls (p50, p99).

spaCy: the pipeline `spacy init config -p textcat,ner -o efficiency` makes (shared tok2vec, exclusive
textcat, no vectors), initialised on the bundle's intents and slot types; an untrained pipeline runs at a
trained one's speed. --spacy-model DIR loads a trained pipeline instead (benchmarks/spacy_peer.py).

twinhead: the bundle through Predictor with each backend: reference (twinhead.inference.predict_logits, the
code path before the fast one), torch and onnx (twinhead.fast), and onnx-int8: the onnx backend on the same
bundle exported with export.quantize: int8 (a temp copy). A bundle without model.onnx gets one added
in a temp copy (twinhead.export.add_onnx: what export.onnx: true writes). --profile prints the onnx
backend's CPU time on the throughput input by stage.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def read_texts(data: Path) -> list[str]:
    path = data / "test" / "seq.in"
    if not path.is_file():
        sys.exit(f"no {path}: run `dvc pull data/raw/snips.dvc`, or pass --data with a BIO folder")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def spacy_pipeline(model_dir: str | None, intents: list[str], slot_types: list[str]):
    import spacy

    if model_dir:
        return spacy.load(model_dir), f"spaCy {spacy.__version__} trained pipeline {model_dir}"
    from spacy.cli.init_config import init_config

    config = init_config(lang="en", pipeline=["textcat", "ner"], optimize="efficiency", gpu=False)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    for label in intents:
        nlp.get_pipe("textcat").add_label(label)
    for label in slot_types:
        nlp.get_pipe("ner").add_label(label)
    nlp.initialize()
    return nlp, f"spaCy {spacy.__version__} textcat+ner, efficiency config, initialised (untrained)"


def throughput(fn, texts: list[str]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of one pass (CPU time is what a shared machine's load
    inflates least; with one thread it is the wall time an idle machine would show)."""
    fn(texts[:1000])  # warm-up: caches, allocator, lazy imports
    c0, t0 = time.process_time(), time.perf_counter()
    fn(texts)
    return time.perf_counter() - t0, time.process_time() - c0


def latency(fn, text: str, reps: int) -> tuple[float, float]:
    for _ in range(50):
        fn(text)
    times = np.empty(reps)
    for k in range(reps):
        t0 = time.perf_counter()
        fn(text)
        times[k] = time.perf_counter() - t0
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="models/export", help="exported bundle (default: models/export)")
    ap.add_argument("--spacy-model", help="a trained spaCy pipeline folder instead of the initialised one")
    ap.add_argument("--data", default="data/raw/snips", help="BIO folder whose test/seq.in is read")
    ap.add_argument("--n", type=int, default=10_000, help="texts in the throughput input (default 10000)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", default="1,2", help="torch / ONNX Runtime threads, comma-separated (default 1,2)")
    ap.add_argument("--reps", type=int, default=500, help="latency calls per system (default 500)")
    ap.add_argument("--backends", default="reference,torch,onnx,onnx-int8",
                    help="twinhead backends to measure (onnx-int8: onnx on the bundle exported with "
                         "export.quantize: int8, made in a temp copy)")
    ap.add_argument("--profile", action="store_true", help="the onnx backend's CPU time by stage")
    args = ap.parse_args()

    import torch

    from twinhead.bundle import ONNX
    from twinhead.export import add_onnx
    from twinhead.predictor import Predictor

    base = read_texts(Path(args.data))
    texts = (base * (args.n // len(base) + 1))[: args.n]
    n_words = sum(len(t.split()) for t in texts)
    one = next((t for t in base if len(t.split()) == 10), base[0])
    bundle = Path(args.bundle)
    if not bundle.is_dir():
        sys.exit(f"no bundle at {bundle}: run `dvc repro export`, or pass --bundle PATH")
    backends = [b for b in args.backends.split(",") if b]
    tmp = tempfile.TemporaryDirectory(prefix="twinhead-speed-")
    if "onnx" in backends and not (bundle / ONNX).is_file():
        bundle = Path(tmp.name) / "bundle"
        add_onnx(args.bundle, bundle)
    int8 = None
    if "onnx-int8" in backends:
        int8 = Path(tmp.name) / "int8"
        add_onnx(bundle, int8, quantize="int8")
    ref = Predictor(bundle, backend="torch")
    nlp, spacy_desc = spacy_pipeline(args.spacy_model, ref.vocabs.intents.itos, ref.config.get("slot_types", []))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min) at start")
    print(f"torch {torch.__version__}; {spacy_desc}")
    print(f"bundle: {args.bundle} ({ref.config['model_config']['tag_decoder']} tag decoder)")
    print(f"throughput input: {len(texts)} texts, {n_words} words, batch size {args.batch_size}; "
          f"latency input: {one!r} ({len(one.split())} words), {args.reps} calls")
    print()
    print("| system | threads | words/s | sentences/s | x spaCy | words/CPU-s | x spaCy | p50 ms | p99 ms | "
          "p50 x spaCy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        spacy_fns = (lambda xs: list(nlp.pipe(xs, batch_size=args.batch_size)), nlp)
        systems = [("spaCy nlp.pipe", spacy_fns)]
        for b in backends:
            p = (Predictor(int8, backend="onnx", threads=threads) if b == "onnx-int8"
                 else Predictor(bundle, backend=b, threads=threads))
            systems.append((f"twinhead {b}", (lambda xs, p=p: p.predict(xs, batch_size=args.batch_size),
                                              lambda t, p=p: p.predict([t]))))
        for name, (batch_fn, one_fn) in systems:
            wall, cpu = throughput(batch_fn, texts)
            p50, p99 = latency(one_fn, one, args.reps)
            if name.startswith("spaCy"):
                spacy = (n_words / wall, n_words / cpu, p50)
            print(f"| {name} | {threads} | {n_words / wall:,.0f} | {len(texts) / wall:,.0f} | "
                  f"{n_words / wall / spacy[0]:.1f} | {n_words / cpu:,.0f} | {n_words / cpu / spacy[1]:.1f} | "
                  f"{p50:.2f} | {p99:.2f} | {spacy[2] / p50:.1f} |", flush=True)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.profile:
        torch.set_num_threads(1)
        pred = Predictor(bundle, backend="onnx", threads=1)
        pred.predict(texts[:1000])
        print("\nwhere the onnx backend's CPU time goes (1 thread, the throughput input; stages timed apart):")
        for name, seconds in stage_times(pred, texts, args.batch_size).items():
            print(f"  {name:<58} {seconds:6.3f} s")
    tmp.cleanup()


def stage_times(pred, texts: list[str], batch_size: int) -> dict[str, float]:
    """CPU seconds of Predictor.predict on `texts` by stage: the encoder and decoder calls are wrapped with
    timers; tokenization is timed on its own; the rest is Python around them (encoding, output dicts)."""
    spent = {"encoder": 0.0, "decoder": 0.0}

    def timed(fn, key):
        def wrapper(*a, **kw):
            c0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[key] += time.process_time() - c0
        return wrapper

    pred.encoder, pred.decoder = timed(pred.encoder, "encoder"), timed(pred.decoder, "decoder")
    c0 = time.process_time()
    pred.predict(texts, batch_size)
    total = time.process_time() - c0
    c0 = time.process_time()
    for t in texts:
        pred.text.tokenize(t)
    tok = time.process_time() - c0
    return {"total (Predictor.predict)": total, "spaCy tokenizer (TextPipeline.tokenize)": tok,
            "encoder (ONNX Runtime session.run)": spent["encoder"],
            "decoder (Viterbi + CRF marginals)": spent["decoder"],
            "the rest (word table, batching, output dicts, entities)": total - tok - sum(spent.values())}


if __name__ == "__main__":
    main()
