"""Units of measurement: only these, and only explicit conversions within one dimension
(a mass fraction is never compared with a concentration)."""

from __future__ import annotations

from decimal import Decimal

# unit -> (dimension, factor to the dimension's base unit)
UNITS: dict[str, tuple[str, Decimal]] = {
    "%": ("mass fraction", Decimal(1)),
    "mg/g": ("mass fraction", Decimal("0.1")),
    "g/kg": ("mass fraction", Decimal("0.1")),
    "ug/g": ("mass fraction", Decimal("0.0001")),
    "ppm": ("mass fraction", Decimal("0.0001")),
    "mg/mL": ("concentration", Decimal(1)),
    "g/L": ("concentration", Decimal(1)),
    "ug/mL": ("concentration", Decimal("0.001")),
    "mg/L": ("concentration", Decimal("0.001")),
    "CFU/g": ("bioburden", Decimal(1)),
    "CFU/mg": ("bioburden", Decimal(1000)),
    "CFU/kg": ("bioburden", Decimal("0.001")),
    "CFU/mL": ("bioburden per volume", Decimal(1)),
    "CFU/100mL": ("bioburden per volume", Decimal("0.01")),
    "EU/mL": ("endotoxin", Decimal(1)),
}
_ALIASES = {"µg/g": "ug/g", "μg/g": "ug/g", "µg/mL": "ug/mL", "μg/mL": "ug/mL",
            "cfu/g": "CFU/g", "cfu/mL": "CFU/mL", "cfu/kg": "CFU/kg", "cfu/mg": "CFU/mg",
            "cfu/100mL": "CFU/100mL", "% w/w": "%"}


def canonical_unit(unit: str) -> str | None:
    unit = unit.strip()
    unit = _ALIASES.get(unit, unit)
    return unit if unit in UNITS else None


def convert(value: float, unit: str, to: str) -> Decimal | None:
    """`value` in `unit` expressed in `to`, exactly; None when they measure different things."""
    a, b = canonical_unit(unit), canonical_unit(to)
    if a is None or b is None or UNITS[a][0] != UNITS[b][0]:
        return None
    return Decimal(repr(value)) * UNITS[a][1] / UNITS[b][1]
