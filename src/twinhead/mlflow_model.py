"""The MLflow pyfunc model, logged as code (models-from-code): no pickle is involved in loading it.

Input: a DataFrame with a `text` column (or a list of strings); the optional param `top_k` (default 3)
sets how many intents `top_intents` lists. Output: one record per text with the intent, its probability,
the top_k intents with their probabilities, the entities (text, label, character start/end, confidence),
tokens and tags: the same as `twinhead predict`. The weights and vocab come from the exported bundle,
logged as the artifact `bundle`, and are checked against each other on load. A missing text (None/NaN) or
an empty one is a DataError naming its row in the input ("input:3: ..."). mlflow.pyfunc.spark_udf
with twinhead.spark.RESULT_TYPE turns the records into a struct column.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

DEFAULT_TOP_K = 3  # twinhead.predictor.DEFAULT_TOP_K; not imported here, so that loading stays in load_context


class TwinheadModel(PythonModel):
    def load_context(self, context):
        from twinhead.predictor import Predictor

        self.predictor = Predictor(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        if hasattr(model_input, "columns"):
            col = "text" if "text" in model_input.columns else model_input.columns[0]
            values = model_input[col].tolist()
        elif isinstance(model_input, str):
            values = [model_input]
        else:
            values = list(model_input)
        texts = [as_text(v, n) for n, v in enumerate(values, start=1)]
        top_k = int((params or {}).get("top_k", DEFAULT_TOP_K))
        return self.predictor.predict(texts, top_k=top_k, where=WHERE)


WHERE = "input"  # how errors name the input, with the 1-based row (within the batch, on Spark): as before


def as_text(value, n: int) -> str:
    """A text as a string; a missing one (None, NaN, pd.NA: a null in a Spark or pandas column) is a DataError,
    where str() would predict the word "None" or "nan"."""
    import pandas as pd

    if isinstance(value, str):
        return value
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        from twinhead.errors import DataError

        raise DataError("text is missing (null)", WHERE, n)
    return str(value)


mlflow.models.set_model(TwinheadModel())
