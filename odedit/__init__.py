"""odedit: audited multimodal LLM editing with ODEdit (invariant trajectory learning).

The library (this package) imports neither Prefect nor MLflow except in `odedit.registry`;
`tasks/` and `flows/` wrap it for orchestration.
"""

__version__ = "0.1.0"
