"""A quantization recipe: which format each side's per-token products use."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ugsep.features import at_least, check_fields, one_of
from ugsep.kernels import Backend  # noqa: F401  (re-exported: its home before ugsep.kernels)

MODES = ("w8a16", "fp8", "w8a16+fp8")


@dataclass
class QuantRecipe:
    """Every field is checked against its type and range (``ugsep.features.check_fields``)."""

    mode: str = one_of(MODES, "w8a16+fp8")  # w8a16: user side only; fp8: item side only; or both
    group_size: int = at_least(0, 0)  # W8A16 scales per output channel (0) or per group of input rows
    fp8_max_rel_error: float = at_least(0, 0.05)  # calibration: item layers worse than this stay in float
    float_layers: list[str] = field(default_factory=list)  # layers calibration kept in float

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def user_w8a16(self) -> bool:
        return "w8a16" in self.mode

    @property
    def item_fp8(self) -> bool:
        return "fp8" in self.mode

    def to_dict(self) -> dict:
        return asdict(self)
