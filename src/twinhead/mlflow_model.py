"""The MLflow pyfunc model, logged as code (models-from-code): no pickle is involved in loading it.

Input: a DataFrame with a `text` column (or a list of strings); the optional param `top_k` (default 3)
sets how many intents `top_intents` lists. Output: one record per text with the intent, its probability,
the top_k intents with their probabilities, the entities (text, label, character start/end, confidence),
tokens and tags: the same as `twinhead predict`. The weights and vocab come from the exported bundle,
logged as the artifact `bundle`, and are checked against each other on load.
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
            texts = [str(t) for t in model_input[col].tolist()]
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = [str(t) for t in model_input]
        top_k = int((params or {}).get("top_k", DEFAULT_TOP_K))
        return self.predictor.predict(texts, top_k=top_k)


mlflow.models.set_model(TwinheadModel())
