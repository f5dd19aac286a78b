"""Throughput of batch prediction on Spark (the logged MLflow model through mlflow.pyfunc.spark_udf) beside one
Python process (twinhead.predictor.Predictor, what `twinhead predict` runs), on the same texts, in one run.

Usage: python benchmarks/spark_predict.py [--bundle models/export] [--texts data/raw/snips/test/seq.in]
           [--n 100000] [--master local[2]] [--partitions 2] [--batch-size 256] [--threads 0] [--json FILE]

The texts (one a line) are repeated up to --n. The bundle is logged and registered, as the export stage does,
in a temporary MLflow store (SQLite) under the system temp folder, removed at the end. Timed:
- one process: loading the bundle, then predicting all texts (torch's default threads, or --threads);
- Spark: two jobs that predict all texts and write Parquet, each including what a real job pays per task
  (Python workers, importing torch, loading the model). The first job also starts the workers; in the second
  Spark reuses them. Starting the session and spark_udf()'s set-up on the driver are printed apart.
Spark gives each Python worker OMP_NUM_THREADS = spark.task.cpus (1), so local[2] uses two cores as two
one-thread processes. The Spark predictions are then read back and compared with the one-process ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def log_model(bundle: Path, store: Path) -> str:
    """The bundle as a registered pyfunc model in a SQLite store in `store`; returns its models:/ URI."""
    from twinhead.export import EXAMPLES, log_pyfunc_model
    from twinhead.predictor import Predictor
    from twinhead.tracking import MlflowConfig, Tracker

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    os.environ["DVC_ROOT"] = str(store)  # the experiment's artifacts go to store/mlartifacts
    t = Tracker.start(MlflowConfig(experiment="spark-benchmark", registered_model="twinhead-bench"), "export")
    if not t.active:
        sys.exit(f"could not log the model: {t.reason}")
    uri = log_pyfunc_model(t, bundle, "twinhead-bench", EXAMPLES, Predictor(bundle).predict(EXAMPLES))
    if uri is None:
        sys.exit("could not log the model (see the warning above)")
    return uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=str(ROOT / "models" / "export"))
    ap.add_argument("--texts", default=str(ROOT / "data" / "raw" / "snips" / "test" / "seq.in"))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--partitions", type=int, default=2, help="of the texts' DataFrame: one model load each")
    ap.add_argument("--batch-size", type=int, default=256, help="of the one-process Predictor")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the one process (0: torch's default)")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()

    base = [t for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t.strip()]
    texts = (base * (args.n // len(base) + 1))[: args.n]
    words = sum(len(t.split()) for t in texts)
    bundle = Path(args.bundle).resolve()
    print(f"{len(texts)} texts ({len(base)} distinct, {words} words) from {args.texts}; bundle {bundle}")
    load_start = load()
    print(f"load average (1/5/15 min) at start: {load_start}", flush=True)

    import torch

    from twinhead.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    predictor = Predictor(bundle)
    single_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = predictor.predict(texts, batch_size=args.batch_size)
    single_predict = time.perf_counter() - t0
    print(f"one process ({torch.get_num_threads()} torch threads): load {single_load:.1f} s, "
          f"predict {single_predict:.1f} s; load average {load()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="twinhead-spark-bench-") as tmp:
        tmp = Path(tmp)
        uri = log_model(bundle, tmp)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        import pandas as pd
        from pyspark.sql import SparkSession

        from twinhead.spark import prediction_udf

        t0 = time.perf_counter()
        spark = (SparkSession.builder.master(args.master).appName("twinhead-spark-benchmark")
                 .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
                 .config("spark.ui.enabled", "false").config("spark.driver.memory", "1g")
                 .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                 .config("spark.pyspark.python", sys.executable).getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        session_s = time.perf_counter() - t0
        frame = spark.createDataFrame(pd.DataFrame({"id": range(len(texts)), "text": texts}))
        frame = frame.repartition(args.partitions).cache()
        frame.count()  # materialized before timing: the jobs below time prediction, not the upload
        t0 = time.perf_counter()
        predict = prediction_udf(spark, uri)
        udf_s = time.perf_counter() - t0
        jobs = []
        for k in (1, 2):
            out = tmp / f"predictions-{k}.parquet"
            t0 = time.perf_counter()
            frame.withColumn("prediction", predict("text")).write.parquet(str(out))
            jobs.append(time.perf_counter() - t0)
            print(f"Spark job {k}: {jobs[-1]:.1f} s; load average {load()}", flush=True)
        spark.stop()
        got = pd.read_parquet(out).sort_values("id")

    same_intent = sum(p["intent"] == s["intent"] for p, s in zip(got["prediction"], single))
    same_entities = sum([(e["label"], int(e["start"]), int(e["end"])) for e in p["entities"]] ==
                        [(e["label"], e["start"], e["end"]) for e in s["entities"]]
                        for p, s in zip(got["prediction"], single))

    rows = [("one process: load + predict", single_load + single_predict),
            ("one process: predict only", single_predict),
            (f"Spark {args.master}, job 1 (starts workers)", jobs[0]),
            (f"Spark {args.master}, job 2 (workers reused)", jobs[1])]
    ref = single_load + single_predict
    print(f"\nSpark session start {session_s:.1f} s, spark_udf() set-up {udf_s:.1f} s (not in the jobs' times)")
    print("| run | seconds | texts/s | words/s | vs one process (load + predict) |\n|---|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.1f} | {len(texts) / s:,.0f} | {words / s:,.0f} | {ref / s:.2f}x |")
    print(f"\nSpark = one process: intent {same_intent}/{len(texts)}, entities {same_entities}/{len(texts)}")
    print(f"load average (1/5/15 min) at end: {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "texts": len(texts), "words": words, "master": args.master, "partitions": args.partitions,
            "torch_threads": torch.get_num_threads(), "single_load_s": single_load,
            "single_predict_s": single_predict, "spark_session_s": session_s, "spark_udf_setup_s": udf_s,
            "spark_jobs_s": jobs, "same_intent": same_intent, "same_entities": same_entities,
            "load_start": load_start, "load_end": load()}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
