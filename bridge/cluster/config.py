"""The ``cluster`` section of the config: one instance among several on a prefix."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.protocol.contract import connection_id_problem


class ClusterConfig(BaseModel):
    """Several instances on one prefix (section ``cluster``; README, "Several instances")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    # This instance's name, unique per prefix; None: <host name>-<mqtt.client_id>.
    instance: str | None = None
    claim_window: float = Field(0.25, gt=0, le=10)  # seconds a new claim waits for a rival
    roll_call: float = Field(1.0, gt=0, le=30)  # seconds instances have to say they live

    @field_validator("instance")
    @classmethod
    def _instance_name(cls, value: str | None) -> str | None:
        if value is not None:
            problem = connection_id_problem(value)  # the same rules as a topic level
            if problem is not None:
                raise ValueError(problem.replace("connection id", "instance name"))
        return value
