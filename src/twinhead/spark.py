"""Batch prediction on Spark: the logged MLflow pyfunc model (twinhead.mlflow_model) as a Spark UDF.

`prediction_udf(spark, "models:/twinhead-joint@candidate")` wraps `mlflow.pyfunc.spark_udf` with the result
type RESULT_TYPE: one struct per text with the intent, its probability, the top intents, the entities (text,
label, character start/end, confidence), tokens and tags, as `twinhead predict` gives them. The pyfunc returns
a list of dicts; spark_udf turns it into a DataFrame and keeps the struct's fields by name.

As a job (`spark-submit src/twinhead/spark.py --model URI --input IN --output OUT`, or `python -m twinhead.spark`
for a local session): reads the texts (Parquet, JSON Lines with a text field, or plain text one a line), adds
the column `prediction` and writes Parquet. Needs pyspark (`pip install twinhead[spark]`) and a Java runtime.
"""

from __future__ import annotations

import argparse
import sys

# Explicit rather than inferred from the model's signature: the signature is inferred from the input example,
# and an example whose prediction has no entity (or a single-task model's None intent) would give the wrong
# element type. `end` is quoted: END is a keyword in Spark SQL's DDL.
RESULT_TYPE = (
    "intent string, probability double, top_intents array<struct<intent: string, probability: double>>, "
    "entities array<struct<text: string, label: string, start: int, `end`: int, confidence: double>>, "
    "tokens array<string>, tags array<string>"
)
DEFAULT_TOP_K = 3  # twinhead.predictor.DEFAULT_TOP_K; not imported here: the driver needs no torch


def prediction_udf(spark, model_uri: str, env_manager: str = "local", top_k: int = DEFAULT_TOP_K):
    """A Spark UDF that predicts a string column of texts with the pyfunc model at `model_uri`.

    env_manager "local": executors use the Python environment they run in (twinhead's dependencies must be
    installed there); "virtualenv" or "uv": each executor builds the model's logged environment first.
    """
    import mlflow

    return mlflow.pyfunc.spark_udf(spark, model_uri, result_type=RESULT_TYPE, env_manager=env_manager,
                                   params={"top_k": top_k})


def read_texts(spark, path: str, text_column: str = "text"):
    """A DataFrame of the texts at `path` (.parquet, .jsonl/.json, anything else: one text a line)."""
    from twinhead.errors import TwinheadError

    lower = path.rstrip("/").lower()
    if lower.endswith(".parquet"):
        frame = spark.read.parquet(path)
    elif lower.endswith((".jsonl", ".json")):
        frame = spark.read.json(path)
    else:
        return spark.read.text(path).withColumnRenamed("value", text_column)
    if text_column not in frame.columns:
        raise TwinheadError(f"{path}: no column {text_column!r} (columns: {', '.join(frame.columns) or 'none'}); "
                            "pass --text-column")
    return frame


def check_texts(frame, text_column: str, where: str) -> None:
    """Refuse null or blank texts before any prediction: in a UDF, one would fail the job half way."""
    from pyspark.sql import functions as F

    from twinhead.errors import DataError

    bad = frame.where(F.col(text_column).isNull() | (F.trim(F.col(text_column)) == "")).count()
    if bad:
        raise DataError(f"{bad} row(s) have a null or blank {text_column!r}; filter them out first", where)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="twinhead.spark", description="Predict a table of texts on Spark with a "
                                 "logged twinhead MLflow model; writes Parquet with a `prediction` column.")
    ap.add_argument("--model", required=True, help="model URI, e.g. models:/twinhead-joint@candidate")
    ap.add_argument("--input", required=True, help=".parquet, .jsonl/.json (with --text-column) or one text a line")
    ap.add_argument("--output", required=True, help="Parquet folder to write (must not exist)")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--env-manager", default="local", choices=["local", "virtualenv", "uv", "conda"])
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    args = ap.parse_args(argv)

    from pyspark.errors import AnalysisException
    from pyspark.sql import SparkSession

    from twinhead.errors import TwinheadError

    # spark-submit's --master and --conf apply; run with plain python, this is a local session.
    spark = SparkSession.builder.appName("twinhead-predict").getOrCreate()
    try:
        frame = read_texts(spark, args.input, args.text_column)
    except AnalysisException as e:  # no such path, unreadable file: Spark's message names it
        raise TwinheadError(f"{args.input}: {e.getMessage()}") from e
    check_texts(frame, args.text_column, args.input)
    predict = prediction_udf(spark, args.model, args.env_manager, args.top_k)
    try:
        frame.withColumn("prediction", predict(args.text_column)).write.mode("errorifexists").parquet(args.output)
    except AnalysisException as e:  # the output exists
        raise TwinheadError(f"{args.output}: {e.getMessage()}") from e
    return 0


if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if not p.endswith("/twinhead")]  # run as a file: `import twinhead` is ours
    from twinhead.errors import run_main

    run_main(main)
