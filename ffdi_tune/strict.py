"""The strict pydantic base of every config section, and range checks shared by several sections."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ffdi_tune.errors import did_you_mean

__all__ = ["StrictModel", "check_range", "range_validator"]


def check_range(name: str, v: tuple[float, float], lowest: float, highest: float) -> None:
    """``v`` must be ``[low, high]`` with ``lowest <= low <= high <= highest``."""
    low, high = v
    if not lowest <= low <= high <= highest:
        raise ValueError(
            f"{name} must be [low, high] with {lowest} <= low <= high <= {highest}, but got "
            f"[{low}, {high}]"
        )


def range_validator(field: str, lowest: float, highest: float):
    """A pydantic validator of ``field``: a ``[low, high]`` range inside ``[lowest, highest]``."""

    def check(v: tuple[float, float]) -> tuple[float, float]:
        check_range(field, v, lowest, highest)
        return v

    return field_validator(field)(check)


class StrictModel(BaseModel):
    """Base of every config section: frozen, unknown keys rejected with a did-you-mean."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(
                        f"unknown key {key!r}{did_you_mean(str(key), valid)}; "
                        f"valid keys are {', '.join(valid)}"
                    )
        return data
