"""The lifecycle of edited models as plain functions (no Prefect, no MLflow): the state
directory, gating, the inbox, and audit history rows. `odedit.registry` is the MLflow side;
`tasks/` and `flows/` orchestrate these with Prefect."""
