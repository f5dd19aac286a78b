"""Peak memory and speed of `twinhead predict --input` for N and 10xN lines: streaming keeps memory flat.

Usage: python benchmarks/predict_memory.py [--lines 20000] [--bundle models/export | --tiny] [--batch-size 256]
Each measurement runs the CLI in its own subprocess (its peak RSS comes from os.wait4) on generated lines
written to a temp folder. --tiny builds a small random-weights bundle there, so no trained model is needed;
otherwise the bundle is made by `dvc repro export`. The CLI and the tiny bundle use the twinhead found on
PYTHONPATH, so the same script measures another checkout with PYTHONPATH=other/src.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("play the new album by the beatles on spotify wake me up at 7 am tomorrow will it rain in paris "
         "book a table for two at an italian restaurant near me add this song to my workout playlist "
         "what is the weather like in san francisco rate this book five stars find the movie schedule").split()


def write_lines(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            fh.write(" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) + "\n")


def tiny_bundle(folder: Path) -> Path:
    """A bundle with random weights and a vocab built from WORDS: as the real one, only smaller."""
    import torch

    from twinhead.checkpoint import save_checkpoint
    from twinhead.export import export_bundle
    from twinhead.model import JointModel, ModelConfig
    from twinhead.vocab import build_vocabs

    words = [WORDS[i: i + 6] for i in range(0, len(WORDS) - 6, 6)]
    tags = [["O", "B-artist", "I-artist", "O", "B-city", "O"] for _ in words]
    vocabs = build_vocabs(words, ["PlayMusic", "GetWeather", "BookRestaurant"] * len(words), tags)
    torch.manual_seed(0)
    cfg = ModelConfig(word_dim=32, char_dim=8, char_filters=16, hidden_size=32, num_layers=1)
    model = JointModel(cfg, len(vocabs.words), len(vocabs.chars), vocabs.tags.itos, len(vocabs.intents)).eval()
    preprocess = {"lang": "en", "lowercase": True, "remove_stopwords": True, "removable_stopwords": ["the", "a"]}
    save_checkpoint(folder / "tiny.pt", model, vocabs, preprocess, {})
    export_bundle(folder / "tiny.pt", folder / "tiny-bundle")
    return folder / "tiny-bundle"


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def measure(bundle: Path, inp: Path, out: Path, batch_size: int) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one `twinhead predict --input` run in a fresh process."""
    cmd = [sys.executable, "-m", "twinhead.cli", "predict", "--bundle", str(bundle), "--input", str(inp),
           "--output", str(out), "--batch-size", str(batch_size), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN would be cumulative)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    if proc.returncode != 0:
        sys.exit(f"twinhead predict failed ({proc.returncode}): {err.strip()}")
    if count_lines(out) != count_lines(inp):
        sys.exit(f"{out}: {count_lines(out)} predictions for {count_lines(inp)} lines")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=20_000, help="N: lines of the smaller input (default 20000)")
    ap.add_argument("--factor", type=int, default=10, help="the larger input has factor x N lines (default 10)")
    ap.add_argument("--bundle", default="models/export", help="exported bundle (default: models/export)")
    ap.add_argument("--tiny", action="store_true", help="build and use a small random-weights bundle instead")
    ap.add_argument("--batch-size", type=int, default=256, help="passed to twinhead predict (default 256)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="twinhead-bench-") as tmp:
        tmp = Path(tmp)
        bundle = tiny_bundle(tmp) if args.tiny else Path(args.bundle)
        if not bundle.is_dir():
            sys.exit(f"no bundle at {bundle}: run `dvc repro export` to make one, pass --bundle PATH, or use "
                     "--tiny for a small random-weights bundle")
        print(f"bundle: {'tiny random weights' if args.tiny else bundle}, batch size {args.batch_size}")
        print(f"{'lines':>9} {'seconds':>8} {'lines/s':>8} {'peak RSS MiB':>13}")
        results = []
        for n in (args.lines, args.lines * args.factor):
            inp = tmp / f"in-{n}.txt"
            write_lines(inp, n)
            seconds, rss = measure(bundle, inp, tmp / "out.jsonl", args.batch_size)
            results.append(rss)
            print(f"{n:9d} {seconds:8.1f} {n / seconds:8.0f} {rss:13.1f}")
        print(f"peak RSS ratio {args.factor}xN / N: {results[1] / results[0]:.2f}")


if __name__ == "__main__":
    main()
