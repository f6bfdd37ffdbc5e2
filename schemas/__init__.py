"""What a request, a batch, an environment set and a gate verdict ARE: pydantic models and
their exported JSON Schema. No behaviour lives here."""

from schemas.request import AuditInfo, EditRequest

__all__ = ["AuditInfo", "EditRequest"]
