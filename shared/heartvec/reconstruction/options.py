"""What a user chooses for a reconstruction, with the ranges it may take, written once: the HTTP
form and its OpenAPI schema, the command line, the job store and `ReconstructSettings` all use
`ReconstructOptions`. No torch here: the API imports it."""

from __future__ import annotations

from typing import Any, cast

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from heartvec.errors import InputError
from heartvec.labels import BUILTIN_TABLES
from heartvec.reconstruction import defaults


class ReconstructOptions(BaseModel):
    """A reconstruction job's options, as submitted (stored with the job).

    Args:
        labels: a built-in label table (the command line also takes a file).
        ignore_unknown_labels: treat label values the table does not know as background.
        resolution: grid points along the longest side of the heart's box.
        refine_steps: latent refinement steps fitting the input itself (0: none).
        refine_points: fit points each refinement step draws (fewer: faster, coarser).
        frame_search: frames a search over the frame's centre and scale scores against the input
            before encoding (0: the frame centred on the input's box).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: str = Field("default", json_schema_extra={"enum": cast(Any, sorted(BUILTIN_TABLES))})
    ignore_unknown_labels: bool = False
    resolution: int = Field(defaults.RESOLUTION, ge=32, le=512)
    refine_steps: int = Field(defaults.REFINE_STEPS, ge=0, le=1000)
    refine_points: int = Field(defaults.REFINE_POINTS, ge=96, le=8192)
    frame_search: int = Field(defaults.FRAME_SEARCH, ge=0, le=64)

    @field_validator("labels")
    @classmethod
    def _builtin_table(cls, name: str) -> str:
        if name not in BUILTIN_TABLES:
            raise ValueError(f"expected one of {sorted(BUILTIN_TABLES)}")
        return name

    @classmethod
    def parse(cls, fields: dict[str, Any], source: str = "options") -> ReconstructOptions:
        """Options from submitted values (form fields are strings: "256", "true").

        Raises:
            InputError: naming each bad or unknown field, its value and what it may be.
        """
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            raise InputError(source, _problems(e, fields)) from e

    @classmethod
    def bounds(cls, name: str) -> tuple[int, int]:
        """The inclusive range of an integer option (for help texts)."""
        metadata = cls.model_fields[name].metadata
        low = next(m.ge for m in metadata if isinstance(m, annotated_types.Ge))
        high = next(m.le for m in metadata if isinstance(m, annotated_types.Le))
        return cast(int, low), cast(int, high)

    @classmethod
    def check(cls, name: str, value: Any, source: str | None = None) -> Any:
        """One option's value, validated as the model validates it (`parse`)."""
        return getattr(cls.parse({name: value}, source or name), name)


def _problems(error: ValidationError, fields: dict[str, Any]) -> str:
    problems = []
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"]) or "options"
        if problem["type"] == "extra_forbidden":
            expected = sorted(ReconstructOptions.model_fields)
            problems.append(f"unknown field {name!r} (expected {expected})")
        else:
            reason = problem["msg"].removeprefix("Value error, ")
            problems.append(f"{name} {fields.get(name)!r}: {reason}")
    return "; ".join(problems)
