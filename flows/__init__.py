"""Prefect flows of the lifecycle: edit_batch, promote, rollback, inbox_drain."""
