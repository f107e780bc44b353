"""The register of suppliers and their manufacturing sites, and what registering one
again means: the same details are a retry, other details a conflict (records are never
edited)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.suppliers.domain.qualification import Qualification
from shared.errors import AlreadyExists


@dataclass(frozen=True)
class Site:
    supplier_id: str
    site_id: str
    name: str
    address: str
    country: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class Supplier:
    supplier_id: str
    name: str
    created_by: str
    created_at: datetime
    # Filled in when the supplier is shown: by site id, and by site, then material.
    sites: tuple[Site, ...] = ()
    qualifications: tuple[Qualification, ...] = ()


@dataclass(frozen=True)
class ApprovedSupplier:
    """A site approved for a material on a date, as the approved supplier list shows it."""

    qualification: Qualification
    supplier_name: str
    site: Site


def check_same_supplier(existing: Supplier, *, name: str) -> None:
    """A supplier created again must have the same name."""
    if existing.name != name:
        raise AlreadyExists(f"supplier {existing.supplier_id} exists with another name")


def check_same_site(existing: Site, *, name: str, address: str, country: str) -> None:
    """A site added again must have the same details."""
    if (existing.name, existing.address, existing.country) != (name, address, country):
        raise AlreadyExists(f"site {existing.site_id} of supplier {existing.supplier_id} "
                            "exists with other details")
