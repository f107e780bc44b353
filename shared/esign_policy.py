"""Which calls need an electronic signature, and the meaning their signer states.

`SIGNED_ACTIONS` is the one table (RPC -> meaning); the interceptor
(shared.esign_interceptor) enforces it, and clients that sign for the people they play
(lotgate_tools.autosign) read it. Also the limits of a signing secret.
"""

from __future__ import annotations

from lotgate.signatures.v1 import signatures_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["SignatureService"].full_name

AUTHORSHIP = pb.MEANING_AUTHORSHIP
REVIEW = pb.MEANING_REVIEW
APPROVAL = pb.MEANING_APPROVAL
RESPONSIBILITY = pb.MEANING_RESPONSIBILITY

_SUPPLIERS = "lotgate.suppliers.v1.SupplierService"
_LOTS = "lotgate.lots.v1.LotService"
_RESULTS = "lotgate.results.v1.ResultService"

# The one table: which RPC needs a signature, and the meaning its signer states.
SIGNED_ACTIONS: dict[str, int] = {
    f"{_SUPPLIERS}/QualifySupplier": APPROVAL,
    f"{_SUPPLIERS}/SuspendQualification": RESPONSIBILITY,
    f"{_SUPPLIERS}/DisqualifySupplier": RESPONSIBILITY,
    f"{_RESULTS}/ApproveSpecification": APPROVAL,
    f"{_RESULTS}/InvalidateResult": RESPONSIBILITY,
    f"{_RESULTS}/ConfirmResult": REVIEW,
    f"{_LOTS}/ReleaseLot": APPROVAL,
    f"{_LOTS}/HoldLot": RESPONSIBILITY,
    f"{_LOTS}/ReleaseHold": RESPONSIBILITY,
    f"{_LOTS}/RejectLot": RESPONSIBILITY,
    f"{_LOTS}/CloseLotReview": REVIEW,
}

DEFAULT_MAX_FAILURES = 5
MIN_SECRET = 8
MAX_SECRET = 200


def meaning_name(meaning: int) -> str:
    return pb.Meaning.Name(meaning)
