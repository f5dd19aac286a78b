"""The `twinhead` command: predict intents and entities on raw text with an exported bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from twinhead.errors import DataError, TwinheadError, run_main


def read_inputs(path: Path) -> list[str]:
    """Texts from a file: JSONL objects with a "text" field if it ends in .jsonl, else one text a line."""
    from twinhead.readers import parse_json_line, read_lines

    lines = read_lines(path)
    if path.suffix != ".jsonl":
        return lines
    texts = []
    for i, line in enumerate(lines, start=1):
        obj = parse_json_line(line, path, i)
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError('expected an object with a string field "text"', str(path), i)
        texts.append(obj["text"])
    return texts


def cmd_predict(args) -> int:
    from twinhead.predictor import Predictor

    if not args.text and not args.input:
        raise TwinheadError("give a text to predict, or --input FILE")
    predictor = Predictor(args.bundle, args.device)
    if args.input:
        from tqdm import tqdm

        from twinhead import fileio

        path = Path(args.input)
        texts = read_inputs(path)
        with tqdm(total=len(texts), unit="text", desc="predict", file=sys.stderr,
                  disable=args.quiet) as bar:
            preds = predictor.predict(texts, args.batch_size, bar.update, where=str(path))
        if args.output:
            n = fileio.write_jsonl(args.output, preds)
            print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
        else:
            for p in preds:
                print(json.dumps(p, ensure_ascii=False))
    else:
        preds = predictor.predict(args.text, args.batch_size, where="argument")
        if len(preds) == 1:
            print(json.dumps(preds[0], ensure_ascii=False, indent=2))
        else:
            for p in preds:
                print(json.dumps(p, ensure_ascii=False))
    st = predictor.stats
    if st.truncated or st.windowed:
        print(f"note: {st.windowed} input(s) split into windows, {st.truncated} truncated "
              f"(longer than model.max_len={predictor.model.cfg.max_len} tokens)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from twinhead import __version__

    ap = argparse.ArgumentParser(prog="twinhead", description=__doc__)
    ap.add_argument("--version", action="version", version=f"twinhead {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="predict intent and entities for texts")
    p.add_argument("text", nargs="*", help="text(s) to predict")
    p.add_argument("--input", "-i", help="file of texts: one a line, or .jsonl with a 'text' field")
    p.add_argument("--output", "-o", help="write JSONL predictions here (default: stdout)")
    p.add_argument("--bundle", "-m", default="models/export", help="exported bundle (default: models/export)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_predict)
    args = ap.parse_args(argv)
    return args.fn(args)


def entry() -> None:
    run_main(main)


if __name__ == "__main__":
    entry()
