"""The MLflow pyfunc model, logged as code (models-from-code): no pickle is involved in loading it.

Input: a DataFrame with a `text` column (or a list of strings). Output: one record per text with the
intent, its probability, the entities (text, label, character start/end), tokens and tags: the same
as `twinhead predict`. The weights and vocab come from the exported bundle, logged as the artifact
`bundle`, and are checked against each other on load.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


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
        return self.predictor.predict(texts)


mlflow.models.set_model(TwinheadModel())
