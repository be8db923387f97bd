"""The code MLflow runs to build the registered policy model (MLflow's "models from code").

The file is stored with the model and executed when the model is loaded; it only names the model
class, so the model's behaviour lives in :mod:`pipelines.tracking.policy` (no pickled objects).
"""

from mlflow.models import set_model

from pipelines.tracking.policy import AgentPolicy

set_model(AgentPolicy())
