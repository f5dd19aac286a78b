"""Streaming readers of the texts to predict, from a file or stdin: one line in memory at a time.

Formats:
  lines  one text a line. A blank line is an error naming it: a text cannot be empty.
  jsonl  one JSON object with a string field "text" a line; blank lines are skipped.
`auto` picks jsonl for a `.jsonl` file (any case), refuses a `.json` file (a JSON document is not
streamable: use JSON Lines or say --format), and reads anything else, and stdin, as lines.

Decoding: UTF-8; a BOM at the start of the input and CRLF line ends are tolerated; invalid UTF-8 is an
error naming its line. Lines are split on \\n only (str.splitlines() would also split on \\x0b, \\x85,
\\u2028...). Line numbers are lines of the input, blank ones included. An input without a single text
(empty, only a BOM, only blank lines) is an error naming it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from twinhead.errors import DataError, TwinheadError
from twinhead.readers import parse_json_line

STDIN, STDIN_NAME = "-", "<stdin>"
FORMATS = ("auto", "lines", "jsonl")
BOM = b"\xef\xbb\xbf"
EMPTY_TEXT = "text is empty or whitespace only"  # the Predictor's wording for the same problem
NO_TEXTS = "no texts to predict (the input is empty or holds only blank lines)"


@dataclass(frozen=True)
class Text:
    line: int  # 1-based line of the input it came from
    text: str


def source_name(spec: str) -> str:
    """How errors name the input: its path as given, or <stdin>."""
    return STDIN_NAME if spec == STDIN else spec


def resolve_format(spec: str, fmt: str = "auto") -> str:
    """'lines' or 'jsonl' for the input `spec` (a path, or - for stdin)."""
    if fmt not in FORMATS:
        raise TwinheadError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt != "auto":
        return fmt
    if spec == STDIN:
        return "lines"
    suffix = Path(spec).suffix.lower()
    if suffix == ".json":
        raise TwinheadError(f"{spec}: a .json file is not read as input: write JSON Lines (.jsonl, one object "
                            'with a "text" field a line), or pass --format jsonl or --format lines')
    return "jsonl" if suffix == ".jsonl" else "lines"


def iter_lines(stream: Iterable[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its line end) of a UTF-8 byte stream, read one line at a time."""
    n = 0
    try:
        for raw in stream:  # binary streams split on b"\n" only
            n += 1
            if n == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                # b"\n" never occurs inside a UTF-8 sequence, so a line decodes alone as in the whole file.
                raise DataError(f"invalid UTF-8 (byte {raw[e.start]:#04x})", name, n) from e
            if line.endswith("\n"):
                line = line[:-1]
            yield n, line[:-1] if line.endswith("\r") else line
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", name, n + 1) from e


def line_texts(lines: Iterable[tuple[int, str]], name: str) -> Iterator[Text]:
    """One text a line. Blank lines before the first text are held back (only their first line number), so
    that an input of blank lines only is reported as having no texts rather than as an error on line 1."""
    first_blank, seen = None, False
    for n, line in lines:
        if line.strip():
            if first_blank is not None:
                raise DataError(EMPTY_TEXT, name, first_blank)
            seen = True
            yield Text(n, line)
        elif seen:
            raise DataError(EMPTY_TEXT, name, n)
        elif first_blank is None:
            first_blank = n
    if not seen:
        raise DataError(NO_TEXTS, name)


def jsonl_texts(lines: Iterable[tuple[int, str]], name: str) -> Iterator[Text]:
    """The string field "text" of one JSON object a line; blank lines are skipped but still counted."""
    seen = False
    for n, line in lines:
        if not line.strip():
            continue
        obj = parse_json_line(line, name, n)
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError('expected an object with a string field "text"', name, n)
        seen = True
        yield Text(n, obj["text"])
    if not seen:
        raise DataError(NO_TEXTS, name)


@contextlib.contextmanager
def open_texts(spec: str, fmt: str = "auto", stdin: BinaryIO | None = None) -> Iterator[Iterator[Text]]:
    """The texts of the file `spec` (or of stdin for -), read lazily; the file is closed on leaving."""
    name, kind = source_name(spec), resolve_format(spec, fmt)
    if spec == STDIN:
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if stream is None:
            raise DataError("stdin is closed", name)
        owned = False
    else:
        try:
            stream = open(spec, "rb")  # closed in the finally below, once the caller is done
        except FileNotFoundError as e:
            raise DataError("file not found", name) from e
        except OSError as e:
            raise DataError(f"cannot read file: {e.strerror}", name) from e
        owned = True
    try:
        yield (jsonl_texts if kind == "jsonl" else line_texts)(iter_lines(stream, name), name)
    finally:
        if owned:
            stream.close()


def batched(texts: Iterable[Text], size: int) -> Iterator[list[Text]]:
    """Lists of `size` texts (the last may be shorter). When reading fails, the texts read before the bad
    line come out first, so that a problem on an earlier line is reported before the reader's."""
    chunk: list[Text] = []
    try:
        for t in texts:
            chunk.append(t)
            if len(chunk) == size:
                yield chunk
                chunk = []
    except DataError:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk
