"""The `twinhead` command: predict intents and entities on raw text with an exported bundle.

`twinhead predict TEXT...` prints one JSON object per text. `twinhead predict --input FILE` (or `-` for
stdin) streams: it reads --batch-size texts, predicts and writes them as JSON Lines, then reads on, so
memory stays flat however long the input. Output goes to stdout (flushed after each batch) or to
--output, which appears only once the whole input was predicted (a failed or killed run leaves the
previous file, if any, untouched). `--html FILE` also writes the predictions as a displaCy page, once
all were predicted. The first bad input line stops the run with one error naming it;
on stdout, the predictions of the batches before it have been written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import TextIO

from twinhead.errors import DataError, TwinheadError, run_main


def check_device(spec: str) -> None:
    """Refuse a device torch does not know or this machine does not have, before loading anything on it."""
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise TwinheadError(f"--device {spec!r}: not a device (use cpu, cuda, cuda:N or mps)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TwinheadError(f"--device {spec}: CUDA is not available on this machine (torch "
                                f"{torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TwinheadError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise TwinheadError(f"--device {spec}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise TwinheadError(f"--device {spec}: not supported (use cpu, cuda, cuda:N or mps)")


def predict_chunk(predictor, chunk, name: str, batch_size: int, top_k: int = 3) -> list[dict]:
    """Predictions for one chunk of inputs.Text; an error on a text names its line of the input."""
    try:
        return predictor.predict([t.text for t in chunk], batch_size, where=name, top_k=top_k)
    except DataError as e:
        if e.line is None or not 1 <= e.line <= len(chunk):
            raise
        raise DataError(e.reason, name, chunk[e.line - 1].line) from e


def predict_stream(predictor, texts, name: str, batch_size: int, out: TextIO, progress, top_k: int = 3,
                   keep: list | None = None) -> int:
    """Predict `texts` chunk by chunk, writing each chunk's JSON Lines to `out` at once; returns the count.
    Predictions are also appended to `keep` when given (--html)."""
    from twinhead.inputs import batched

    n = 0
    for chunk in batched(texts, batch_size):
        preds = predict_chunk(predictor, chunk, name, batch_size, top_k)
        out.write("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds))
        out.flush()  # a reader of stdout gets each chunk now, not when the buffer fills
        if keep is not None:
            keep.extend(preds)
        progress(len(chunk))
        n += len(chunk)
    return n


def predict_input(args, predictor, texts, name: str, keep: list | None = None) -> None:
    from tqdm import tqdm

    from twinhead import fileio

    with tqdm(unit="text", desc="predict", file=sys.stderr, disable=args.quiet) as bar:
        if args.output:
            # Written beside the destination and renamed into place only when every input was predicted.
            try:
                with fileio.atomic_path(args.output) as tmp, open(tmp, "w", encoding="utf-8") as fh:
                    n = predict_stream(predictor, texts, name, args.batch_size, fh, bar.update, args.top_k, keep)
            except OSError as e:  # input errors are DataErrors: this is creating, writing or renaming the output
                raise TwinheadError(f"{args.output}: cannot write the predictions: {e.strerror}") from e
        else:
            n = predict_stream(predictor, texts, name, args.batch_size, sys.stdout, bar.update, args.top_k, keep)
    if args.output:
        print(f"wrote {n} predictions to {args.output}", file=sys.stderr)


def write_html(path: str, preds: list[dict]) -> None:
    """The predictions as a displaCy page, in place only once complete."""
    from twinhead import fileio
    from twinhead.render import predictions_html

    try:
        fileio.write_text(path, predictions_html(preds))
    except OSError as e:
        raise TwinheadError(f"--html {path}: cannot write the page: {e.strerror}") from e
    print(f"wrote {len(preds)} predictions as HTML to {path}", file=sys.stderr)


def cmd_predict(args) -> int:
    if args.text and args.input is not None:
        raise TwinheadError("give texts or --input, not both")
    if not args.text and args.input is None:
        raise TwinheadError("give a text to predict, or --input FILE (- for stdin)")
    if args.input is None and (args.output or args.format != "auto"):
        raise TwinheadError(f"{'--output' if args.output else '--format'} applies to --input only; "
                            "predictions of texts given as arguments are printed")
    if args.output and os.path.isdir(args.output):
        raise TwinheadError(f"--output {args.output}: is a folder; give a file name")
    if args.html and os.path.isdir(args.html):
        raise TwinheadError(f"--html {args.html}: is a folder; give a file name")
    check_device(args.device)
    # Imported only now: the argument errors above come at once, without loading torch and spaCy.
    import torch

    from twinhead.inputs import open_texts, source_name
    from twinhead.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)  # the Predictor gives ONNX Runtime the same number
    if args.input is None:
        predictor = Predictor(args.bundle, args.device)
        preds = predictor.predict(args.text, args.batch_size, where="argument", top_k=args.top_k)
        if len(preds) == 1:
            print(json.dumps(preds[0], ensure_ascii=False, indent=2))
        else:
            for p in preds:
                print(json.dumps(p, ensure_ascii=False))
    else:
        preds = [] if args.html else None
        # The input is opened first (a missing file fails fast), the bundle loaded before reading from it.
        with open_texts(args.input, args.format) as texts:
            predictor = Predictor(args.bundle, args.device)
            predict_input(args, predictor, texts, source_name(args.input), preds)
    if args.html:
        write_html(args.html, preds)
    st = predictor.stats
    if st.truncated or st.windowed:
        print(f"note: {st.windowed} input(s) split into windows, {st.truncated} truncated "
              f"(longer than model.max_len={predictor.model.cfg.max_len} tokens)", file=sys.stderr)
    return 0


def cmd_ui(args) -> int:
    """`mlflow ui` on the project's store, announced by the URL of the experiment's training runs."""
    import subprocess

    try:
        import mlflow
    except ImportError:
        raise TwinheadError("twinhead ui needs MLflow: pip install 'twinhead[pipeline]'") from None
    from twinhead.tracking import default_tracking_uri, experiment_page

    uri = default_tracking_uri()
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise TwinheadError(f"no MLflow store at {uri[len('sqlite:///'):]}: run `dvc repro` (or a stage that "
                            "logs to MLflow) first, or set MLFLOW_TRACKING_URI")
    exp = mlflow.MlflowClient(uri).get_experiment_by_name(args.experiment)
    if exp is None:
        raise TwinheadError(f"no experiment {args.experiment!r} in {uri}: run `dvc repro` first "
                            "(or pass --experiment, the mlflow.experiment param)")
    # MLflow 3.17's UI opens every experiment on the view of its global GenAI / Model training switch
    # (default GenAI) whatever the experiment's mlflow.experimentKind tag says; this URL names the runs view.
    print(f"twinhead: training runs of {args.experiment!r}: "
          f"{experiment_page(f'http://{args.host}:{args.port}', exp.experiment_id)}", flush=True)
    bindir = os.path.dirname(sys.executable)  # mlflow ui starts uvicorn from PATH
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port)]
    return subprocess.call(cmd, env=env)


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value!r}")
    return n


def nonneg_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, not {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from twinhead import __version__

    ap = argparse.ArgumentParser(prog="twinhead", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"twinhead {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, help="what to do")
    p = sub.add_parser("predict", help="predict intent and entities for texts",
                       description="Predict intent and entities: for TEXT arguments, or streamed from --input.")
    p.add_argument("text", nargs="*", help="text(s) to predict (not together with --input); put -- before "
                                           "texts starting with -")
    p.add_argument("--input", "-i", metavar="FILE",
                   help="file of texts, or - for stdin: read, predicted and written --batch-size texts at a time")
    p.add_argument("--format", "-f", choices=("auto", "lines", "jsonl"), default="auto",
                   help="input format: lines (one text a line; a blank line is an error) or jsonl (one object "
                        "with a string field 'text' a line; blank lines skipped). auto (default): jsonl for a "
                        ".jsonl file, an error for .json, lines otherwise and for stdin")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the JSONL predictions here, in place only once all input was predicted "
                        "(default: stdout, written as each batch is done)")
    p.add_argument("--html", metavar="FILE",
                   help="also write the predictions as an HTML page (displaCy: entities highlighted, intent and "
                        "probability above each text); holds every prediction in memory until written")
    p.add_argument("--bundle", "-m", default="models/export", help="exported bundle (default: models/export)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="texts read, predicted and written at a time (default: 256)")
    p.add_argument("--top-k", type=positive_int, default=3, metavar="K",
                   help="intents listed in each prediction's top_intents, most probable first (default: 3)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N or mps")
    p.add_argument("--threads", type=nonneg_int, default=1, metavar="N",
                   help="CPU threads (torch and ONNX Runtime); 0: one per core (default: 1, measured fastest: "
                        "README, Prediction speed)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar on stderr")
    p.set_defaults(fn=cmd_predict)
    p = sub.add_parser("ui", help="open MLflow's UI on the project's runs",
                       description="Start `mlflow ui` on the project's MLflow store (mlflow.db at the project "
                                   "root, or MLFLOW_TRACKING_URI) and print the URL of the experiment's "
                                   "training runs. Run it from the project root; Ctrl-C stops it.")
    p.add_argument("--experiment", default="twinhead", help="MLflow experiment (default: twinhead)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=5000, help="port (default: 5000)")
    p.set_defaults(fn=cmd_ui)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like an exception, so the temp file behind --output is removed on the way out.
    raise SystemExit(128 + signum)


def entry() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(encoding="utf-8")  # JSON Lines are UTF-8 whatever the locale says
    try:
        run_main(main)
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly as Unix filters do, and point stdout at
        # /dev/null so that the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)


if __name__ == "__main__":
    entry()
