"""preprocess: raw dataset -> one Parquet file per split + meta.json, and the data report.

Inputs:  the dataset folder (BIO folder or JSONL format; see README).
Outputs: OUT/{train,dev,test}.parquet, OUT/meta.json (the text pipeline's settings incl. the
         stop-word rule, the dataset's identity), OUT/skipped.json (lines skipped with
         data.on_error=skip); REPORT (metrics/data.json: counts per split).
Params:  base, data, preprocess.
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
from twinhead.params import BaseConfig, as_dict, load_config
from twinhead.preprocess import PreprocessConfig, dataset_identity, preprocess, write_outputs
from twinhead.readers import DataConfig

SECTIONS = {"base": BaseConfig, "data": DataConfig, "preprocess": PreprocessConfig}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="dataset folder")
    ap.add_argument("out", help="output folder for the processed splits")
    ap.add_argument("report", help="data report (JSON)")
    args = ap.parse_args()
    p = load_config(SECTIONS)
    frames, meta, report, skipped = preprocess(args.raw, p["data"], p["preprocess"], p["base"].seed)
    meta["dataset"] = dataset_identity(Path(args.raw))
    meta["params"] = as_dict({"data": p["data"], "preprocess": p["preprocess"]})
    write_outputs(args.out, frames, meta, skipped)
    fileio.write_json(args.report, report)
    for split, r in report.items():
        print(f"{split}: {r['sentences']} sentences, {r['tokens']} tokens, {r['removed_stopwords']} stop words "
              f"removed, {r['skipped_lines']} lines skipped, {r['labels_unseen_in_train']} labels unseen in train")
    return 0


if __name__ == "__main__":
    run_main(main)
