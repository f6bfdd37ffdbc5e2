"""odedit: audited multimodal LLM editing with ODEdit (invariant trajectory learning).

The library (this package) imports neither Prefect nor MLflow except in `odedit.registry`;
`tasks/` and `flows/` wrap it for orchestration.
"""

import os as _os

# Model loading prints a tqdm bar per checkpoint ("Loading weights"); in flow logs and CLI
# output it is noise. Read by huggingface_hub / transformers at import; set to 0 to get it back.
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
_os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

__version__ = "0.1.0"
