"""vocab: train split -> vocabularies of words, characters, intents and tags (JSON lists).

Inputs:  PROCESSED/train.parquet.
Outputs: OUT/{words,chars,intents,tags}.json, OUT/meta.json (sizes and the params used).
Params:  vocab.
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
