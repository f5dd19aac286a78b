"""`twinhead predict` driven as a user does: files, stdin, exit codes and stderr lines; a subprocess where the
process itself is under test (pipes that stay open, signals, a closed stdout, the console's encoding, the
environment) and in this process elsewhere (the same `main`, without paying torch's and spaCy's imports per
run: about 5 s each on a slow CPU)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from tests.test_bundle import make_bundle
from twinhead.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Play the Beatles on Spotify now", "wake me up at 7 am", "will it rain tomorrow in Paris?",
         "Rüdiger's café, São Paulo 😀"]
TIMEOUT = 120  # seconds a single CLI run may take before the test fails instead of hanging


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("cli-bundle"))[1]


@pytest.fixture(scope="module")
def expected(bundle) -> dict[str, dict]:
    """What the Predictor itself says for each text: the CLI must write exactly this."""
    return {p["text"]: p for p in Predictor(bundle).predict(TEXTS)}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), e.get("PYTHONPATH", "")])
    e.pop("PYTHONUNBUFFERED", None)  # as a user runs it: only the CLI's own flushes push output out
    return e


def predict_argv(bundle: Path, *args: str) -> list[str]:
    return ["predict", "--bundle", str(bundle), "--quiet", *args]


def command(bundle: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "twinhead.cli", *predict_argv(bundle, *args)]


def cli(bundle: Path, *args: str, stdin: bytes = b"", cwd: Path | None = None, extra_env: dict | None = None,
        process: bool = False) -> subprocess.CompletedProcess:
    """`twinhead predict --bundle BUNDLE --quiet ARGS`: in a new process with process=True or extra_env, else
    in this one (the CLI's main under its run_main, stdin, stdout and stderr as bytes, the exit code)."""
    if process or extra_env is not None:
        return subprocess.run(command(bundle, *args), input=stdin, capture_output=True, cwd=cwd, timeout=TIMEOUT,
                              env={**env(), **(extra_env or {})})
    return cli_in_process(predict_argv(bundle, *args), stdin, cwd)


def cli_in_process(argv: list[str], stdin: bytes, cwd: Path | None) -> subprocess.CompletedProcess:
    import contextlib
    import io

    import torch

    from twinhead.cli import main
    from twinhead.errors import run_main

    out, err = io.BytesIO(), io.BytesIO()
    text_out, text_err = (io.TextIOWrapper(b, encoding="utf-8", write_through=True) for b in (out, err))
    text_in = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    threads, here = torch.get_num_threads(), os.getcwd()  # the CLI sets the thread count (--threads)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with (mock.patch.object(sys, "stdin", text_in), contextlib.redirect_stdout(text_out),
              contextlib.redirect_stderr(text_err)):
            try:
                run_main(lambda: main(argv))
                code = 0
            except SystemExit as e:  # run_main and argparse end with sys.exit
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def rows(out: bytes) -> list[dict]:
    text = out.decode("utf-8")
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.split("\n")[:-1]]


def approx_floats(obj):
    """obj with every float wrapped in pytest.approx (nested in lists and dicts)."""
    if isinstance(obj, float):
        return pytest.approx(obj, abs=1e-6)
    if isinstance(obj, dict):
        return {k: approx_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [approx_floats(v) for v in obj]
    return obj


def assert_predictions(got: list[dict], texts: list[str], expected: dict[str, dict]) -> None:
    """The rows are the Predictor's predictions of `texts`, in order; probabilities and confidences may
    differ in the last bits, as batches of another composition are padded differently."""
    assert [g["text"] for g in got] == texts
    for g in got:
        assert g == approx_floats(expected[g["text"]])


def one_error_line(res: subprocess.CompletedProcess) -> str:
    """The run failed with exit code 1 and exactly one line on stderr, no traceback; returns that line."""
    err = res.stderr.decode("utf-8")
    assert res.returncode == 1, (res.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


# --- inputs that work --------------------------------------------------------------------------


def test_lines_file_with_bom_and_crlf(bundle, expected, tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(TEXTS).encode("utf-8") + b"\r\n")
    res = cli(bundle, "--input", str(path))
    assert res.returncode == 0, res.stderr
    assert_predictions(rows(res.stdout), TEXTS, expected)


@pytest.mark.parametrize("name", ["in.jsonl", "IN.JSONL", "in.JsonL"])
def test_jsonl_suffix_in_any_case_is_read_as_jsonl(bundle, expected, tmp_path, name):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": k, "text": t}) + "\n\n" for k, t in enumerate(TEXTS)),
                    encoding="utf-8")
    out = tmp_path / "out.jsonl"
    res = cli(bundle, "--input", str(path), "--output", str(out))
    assert res.returncode == 0, res.stderr
    assert res.stdout == b""
    assert_predictions(rows(out.read_bytes()), TEXTS, expected)
    assert f"wrote {len(TEXTS)} predictions to {out}" in res.stderr.decode()


def test_stdin_dash(bundle, expected):
    res = cli(bundle, "--input", "-", "--batch-size", "3", stdin="\n".join(TEXTS).encode("utf-8"), process=True)
    assert res.returncode == 0, res.stderr
    assert_predictions(rows(res.stdout), TEXTS, expected)


def test_stdin_jsonl_needs_format(bundle, expected):
    data = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS).encode("utf-8")
    res = cli(bundle, "--input", "-", "--format", "jsonl", stdin=data)
    assert res.returncode == 0, res.stderr
    assert_predictions(rows(res.stdout), TEXTS, expected)
    res = cli(bundle, "--input", "-", stdin=data)  # auto: stdin is read as lines, each JSON line a text
    assert [r["text"] for r in rows(res.stdout)] == [json.dumps({"text": t}) for t in TEXTS]


def test_json_file_with_explicit_format_is_read(bundle, expected, tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"text": TEXTS[0]}) + "\n", encoding="utf-8")
    res = cli(bundle, "--input", str(path), "--format", "jsonl")
    assert res.returncode == 0, res.stderr
    assert_predictions(rows(res.stdout), TEXTS[:1], expected)


def test_texts_as_arguments_unchanged(bundle, expected):
    res = cli(bundle, TEXTS[0], process=True)  # a real console script: stdout is UTF-8 whatever the locale
    assert res.returncode == 0, res.stderr
    assert_predictions([json.loads(res.stdout)], TEXTS[:1], expected)
    assert res.stdout.decode().startswith('{\n  "text"')  # one text: indented JSON
    res = cli(bundle, "--", *TEXTS[:2])
    assert_predictions(rows(res.stdout), TEXTS[:2], expected)


# --- inputs that are refused with one line -------------------------------------------------------


@pytest.mark.parametrize("name,data", [
    ("empty.txt", b""),
    ("bom.txt", b"\xef\xbb\xbf"),
    ("blank.txt", b"\n \n\t\r\n"),
    ("bom-blank.txt", b"\xef\xbb\xbf\n\n"),
    ("blank.jsonl", b"\n  \n\n"),
    ("bom.jsonl", b"\xef\xbb\xbf"),
])
def test_input_without_texts_is_an_error(bundle, tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    out = tmp_path / "out.jsonl"
    res = cli(bundle, "--input", str(path), "--output", str(out))
    assert one_error_line(res) == f"error: {path}: no texts to predict (the input is empty or holds only blank lines)"
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left beside the output either


def test_stdin_without_texts_is_an_error(bundle):
    res = cli(bundle, "--input", "-", stdin=b"\xef\xbb\xbf\n")
    assert one_error_line(res).startswith("error: <stdin>: no texts to predict")


@pytest.mark.parametrize("name", ["in.json", "IN.JSON"])
def test_json_file_is_refused_with_advice(bundle, tmp_path, name):
    path = tmp_path / name
    path.write_text(json.dumps([{"text": "hello"}]), encoding="utf-8")
    line = one_error_line(cli(bundle, "--input", str(path)))
    assert line.startswith(f"error: {path}: a .json file is not read as input")
    assert "JSON Lines (.jsonl" in line and "--format" in line


def test_texts_together_with_input_are_refused(bundle, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("hello\n", encoding="utf-8")
    res = cli(bundle, "--input", str(path), "play music")
    assert one_error_line(res) == "error: give texts or --input, not both"
    assert res.stdout == b""


@pytest.mark.parametrize("args,message", [
    ((), "error: give a text to predict, or --input FILE (- for stdin)"),
    (("hello", "--output", "x.jsonl"), "error: --output applies to --input only; predictions of texts given "
                                       "as arguments are printed"),
    (("hello", "--format", "jsonl"), "error: --format applies to --input only; predictions of texts given "
                                     "as arguments are printed"),
])
def test_argument_combinations(bundle, tmp_path, args, message):
    res = cli(bundle, *args, cwd=tmp_path)
    assert one_error_line(res) == message
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_one_line(bundle, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("hello\n", encoding="utf-8")
    assert one_error_line(cli(bundle, "--input", str(path), "--output", str(tmp_path))) == (
        f"error: --output {tmp_path}: is a folder; give a file name")
    out = path / "out.jsonl"  # a file where a folder should be
    line = one_error_line(cli(bundle, "--input", str(path), "--output", str(out)))
    assert line.startswith(f"error: {out}: cannot write the predictions: ")
    assert path.read_text(encoding="utf-8") == "hello\n"


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_one_line(bundle, device):
    # CUDA_VISIBLE_DEVICES="" hides every GPU, so this holds on a machine with CUDA too.
    res = cli(bundle, "hello", "--device", device, extra_env={"CUDA_VISIBLE_DEVICES": ""})
    line = one_error_line(res)
    assert line.startswith(f"error: --device {device}: CUDA is not available on this machine")


def test_unknown_device_is_one_line(bundle):
    assert one_error_line(cli(bundle, "hello", "--device", "gpu0")).startswith("error: --device 'gpu0': not a device")


def test_batch_size_must_be_positive(bundle):
    res = cli(bundle, "hello", "--batch-size", "0")
    assert res.returncode == 2
    assert "argument --batch-size: must be a positive integer, not '0'" in res.stderr.decode()


def all_parsers(parser) -> list:
    """The parser and, recursively, every subcommand's parser."""
    import argparse

    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.extend(all_parsers(sub))
    return out


def test_every_option_of_every_command_has_help():
    import argparse

    from twinhead.cli import build_parser

    parsers = all_parsers(build_parser())
    assert [p.prog for p in parsers] == ["twinhead", "twinhead predict", "twinhead ui"]
    missing = [f"{p.prog}: {a.option_strings or a.dest}" for p in parsers for a in p._actions
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"options without help text: {missing}"
    dests = {a.dest for a in parsers[1]._actions}
    assert dests >= {"text", "input", "format", "output", "bundle", "batch_size", "device", "top_k", "threads"}


def test_help_check_catches_an_option_without_help():
    from twinhead.cli import build_parser

    ap = build_parser()
    (sub,) = [a for a in ap._actions if a.dest == "command"]
    sub.choices["predict"].add_argument("--undocumented")
    assert any(a.help is None for p in all_parsers(ap) for a in p._actions)


def test_top_k_sets_the_number_of_intents_listed(bundle, expected):
    res = cli(bundle, "--top-k", "2", TEXTS[0])
    assert res.returncode == 0, res.stderr
    (got,) = [json.loads(res.stdout)]
    assert got["top_intents"] == approx_floats(expected[TEXTS[0]]["top_intents"][:2])
    res = cli(bundle, "--top-k", "0", "hello")
    assert res.returncode == 2 and "argument --top-k: must be a positive integer, not '0'" in res.stderr.decode()


@pytest.mark.parametrize("name,data,batch,where", [
    # the empty text sits in the second chunk (batch size 2) but on line 5 of the file
    ("in.jsonl", '{"text": "a"}\n\n{"text": "b"}\n\n{"text": "  "}\n', 2, (5, "text is empty or whitespace only")),
    ("in.jsonl", '\n\n{"text": "a"}\n\n["text"]\n', 2, (5, 'expected an object with a string field "text"')),
    ("in.jsonl", '\n{"text": "a"}\n\n{"text": "b"\n', 256, (4, "bad JSON")),
    ("in.txt", "play\r\nmusic\r\n\r\nnow\r\n", 1, (3, "text is empty or whitespace only")),
    ("in.txt", "\n\nplay\n", 256, (1, "text is empty or whitespace only")),
    ("in.txt", "play\nmu\xffsic\n", 256, (2, "invalid UTF-8 (byte 0xff)")),
])
def test_errors_name_the_line_of_the_file(bundle, tmp_path, name, data, batch, where):
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    out = tmp_path / "out.jsonl"
    line = one_error_line(cli(bundle, "--input", str(path), "--output", str(out), "--batch-size", str(batch)))
    assert line.startswith(f"error: {path}:{where[0]}: {where[1]}"), line
    assert not out.exists()


def test_error_on_stdin_names_stdin_and_line(bundle):
    res = cli(bundle, "--input", "-", "--batch-size", "1", stdin=b"play\nmusic\n\nnow\n")
    assert one_error_line(res) == "error: <stdin>:3: text is empty or whitespace only"
    assert [r["text"] for r in rows(res.stdout)] == ["play", "music"]  # streamed before the bad line


def test_missing_input_fails_before_loading_the_bundle(tmp_path):
    res = cli(tmp_path / "no-bundle", "--input", str(tmp_path / "nope.txt"))
    assert one_error_line(res) == f"error: {tmp_path / 'nope.txt'}: file not found"


def test_tampered_bundle_is_one_line(bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    cfg = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    cfg["preprocess"]["lowercase"] = False
    (copy / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    line = one_error_line(cli(copy, "hello"))
    assert line.startswith(f"error: {copy / 'config.json'}: edited after export")


# --- streaming ----------------------------------------------------------------------------------


class Reader:
    """Lines of a pipe read on a thread, so that a test can wait for one with a timeout."""

    def __init__(self, pipe):
        self.lines: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.thread.start()

    def _run(self, pipe):
        for line in pipe:
            self.lines.put(line)
        self.lines.put(None)

    def get(self, timeout: float = TIMEOUT) -> bytes | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s") from None


def start(bundle: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(command(bundle, "--input", "-", "--batch-size", "2", *args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), **kw)


def test_predictions_stream_before_stdin_is_closed(bundle, expected):
    proc = start(bundle)
    try:
        out = Reader(proc.stdout)
        for k in range(2):  # two chunks of two texts; stdin stays open throughout
            proc.stdin.write(f"{TEXTS[2 * k]}\n{TEXTS[2 * k + 1]}\n".encode())
            proc.stdin.flush()
            got = [json.loads(out.get()), json.loads(out.get())]
            assert_predictions(got, TEXTS[2 * k: 2 * k + 2], expected)
            assert proc.poll() is None  # still running, waiting for more input
        proc.stdin.close()
        assert out.get() is None  # end of output
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _chunks_written(out: Path, n: int) -> None:
    """Wait until the temp file behind --output holds n lines (chunks are written as they are done)."""
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        for tmp in out.parent.glob(f".{out.name}.*.tmp"):
            if tmp.read_bytes().count(b"\n") >= n:
                return
        time.sleep(0.05)
    raise AssertionError(f"no {n} predictions written within {TIMEOUT} s")


@pytest.mark.parametrize("previous", [None, b"previous predictions\n"], ids=["new", "replacing"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_leaves_no_partial_output(bundle, tmp_path, previous, sig):
    out = tmp_path / "out.jsonl"
    if previous is not None:
        out.write_bytes(previous)
    proc = start(bundle, "--output", str(out))
    try:
        proc.stdin.write(("\n".join(TEXTS) + "\n").encode("utf-8"))  # two chunks; stdin stays open (slow input)
        proc.stdin.flush()
        _chunks_written(out, 4)
        proc.send_signal(sig)
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == -sig if sig == signal.SIGKILL else rc == 128 + sig
    if previous is None:
        assert not out.exists()
    else:
        assert out.read_bytes() == previous
    if sig == signal.SIGTERM:  # unwound cleanly: the temp file is gone too
        assert sorted(p.name for p in tmp_path.iterdir()) == ([] if previous is None else ["out.jsonl"])
        assert b"Traceback" not in proc.stderr.read()


def test_closed_stdout_is_a_quiet_exit(bundle):
    proc = start(bundle)
    proc.stdout.close()  # the reader went away, as with `twinhead predict ... | head -0`
    try:
        proc.stdin.write(("\n".join(TEXTS) + "\n").encode("utf-8"))
        proc.stdin.close()
        err = proc.stderr.read()
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGPIPE
    assert err == b""
