"""vocab: train split -> vocabularies of words, characters, intents and tags (JSON lists).

Inputs:  PROCESSED/train.parquet.
Outputs: OUT/{words,chars,intents,tags}.json, OUT/meta.json (sizes and the params used).
Params:  vocab.
"""

import argparse
import sys

try:
    from twinhead.errors import run_main
except ModuleNotFoundError:  # `python` on PATH is not the project's environment
    sys.exit(f"error: {sys.executable} cannot import twinhead: activate the environment first "
             "(`source .venv/bin/activate`, see README) or use the make targets")

from twinhead import fileio
from twinhead.params import as_dict, load_config
from twinhead.preprocess import load_split
from twinhead.vocab import VocabConfig, build_vocabs

SECTIONS = {"vocab": VocabConfig}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("processed", help="folder of processed splits")
    ap.add_argument("out", help="output folder for the vocabularies")
    args = ap.parse_args()
    cfg = load_config(SECTIONS)["vocab"]
    train = load_split(args.processed, "train")
    vocabs = build_vocabs(train["words"], train["intent"], train["word_tags"], min_freq=cfg.min_freq)
    vocabs.save(args.out)
    sizes = {n: len(v) for n, v in vocabs.to_lists().items()}
    fileio.write_json(f"{args.out}/meta.json", {"sizes": sizes, "params": {"vocab": as_dict(cfg)}})
    print("vocab sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    run_main(main)
