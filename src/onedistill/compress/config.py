"""Config of the compression stages (placeholder until the compression package lands)."""

from pydantic import BaseModel, ConfigDict


class CompressionConfig(BaseModel):
    """Compression plan for a deployment target."""

    model_config = ConfigDict(extra="forbid")
