"""The ``cluster`` section of the config: one instance among several on a prefix."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bridge.protocol.contract import connection_id_problem


class ClusterConfig(BaseModel):
    """Several instances on one prefix (section ``cluster``; README, "Several instances")."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    enabled: bool = False
    """This bridge is one instance of several serving the prefix (`run --workers N` implies it)."""
    instance: str | None = None
    """This instance's name, unique per prefix; null: `<host name>-<mqtt.client_id>`."""
    claim_window: float = Field(0.25, gt=0, le=10)
    """Seconds a new claim of a connection id waits for a rival claim."""
    roll_call: float = Field(1.0, gt=0, le=30)
    """Seconds bridges have to say they are alive. Every bridge, standalone too, calls the roll
    when it starts (holding commands meanwhile), so two never serve one prefix."""

    @model_validator(mode="after")
    def _no_inert_keys(self) -> ClusterConfig:
        """Keys that only a cluster instance uses are an error without ``enabled: true``:
        the bridge would run standalone while the owner believes it is one of several."""
        if self.enabled:
            return self
        inert = [
            key
            for key in ("instance", "claim_window")
            if getattr(self, key) != type(self).model_fields[key].default
        ]
        if inert:
            named = " and ".join(f"cluster.{key}" for key in inert)
            raise ValueError(
                f"{named} only apply to a cluster instance, and cluster.enabled is not true: "
                "add `enabled: true` to the cluster section (on every bridge of this "
                "prefix; `run --workers N` implies it), or remove them"
            )
        return self

    @field_validator("instance")
    @classmethod
    def _instance_name(cls, value: str | None) -> str | None:
        if value is not None:
            problem = connection_id_problem(value)  # the same rules as a topic level
            if problem is not None:
                raise ValueError(problem.replace("connection id", "instance name"))
        return value
