# odedit model code shim: runs the INSTALLED odedit (odedit.registry_pyfunc); digest-checked.
import mlflow
from odedit.registry_pyfunc import EditedModel
mlflow.models.set_model(EditedModel())
