"""vocab: train split -> vocabularies of words, characters, intents and tags (JSON lists).

Inputs:  PROCESSED/train.parquet.
Outputs: OUT/{words,chars,intents,tags}.json, OUT/meta.json (sizes and the params used).
Params:  vocab.
"""

import argparse

from twinhead import fileio
from twinhead.errors import run_main
from twinhead.params import load_params
from twinhead.preprocess import load_split
from twinhead.vocab import build_vocabs

PARAMS = ("vocab",)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("processed", help="folder of processed splits")
    ap.add_argument("out", help="output folder for the vocabularies")
    args = ap.parse_args()
    p = load_params(PARAMS)["vocab"]
    train = load_split(args.processed, "train")
    vocabs = build_vocabs(train["words"], train["intent"], train["word_tags"], min_freq=p["min_freq"])
    vocabs.save(args.out)
    sizes = {n: len(v) for n, v in vocabs.to_lists().items()}
    fileio.write_json(f"{args.out}/meta.json", {"sizes": sizes, "params": {"vocab": p}})
    print("vocab sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    run_main(main)
