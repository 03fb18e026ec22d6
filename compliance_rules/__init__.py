"""carbonlink's compliance rules engine: facts in, decision out; pure, clock injected.

The public API, for the bridge and the gateway:

- load a pack: :func:`load_pack` (built-in name or path), :func:`load_builtin`;
- decide: :func:`evaluate_transfer`, :func:`evaluate_surrender`, :func:`evaluate_listing`,
  :func:`offset_limits`;
- how an entity leaves a scheme: :class:`MigrationRules` (a pack version's ``migration``);
- build facts from plain data (RPC or CLI input): :func:`parse_transfer`,
  :func:`parse_listing`.
"""

from compliance_rules.decision import (
    Decision,
    ListingDecision,
    OffsetLimitStatus,
    UseEligibility,
    Violation,
)
from compliance_rules.engine import (
    evaluate_listing,
    evaluate_surrender,
    evaluate_transfer,
    offset_limits,
)
from compliance_rules.errors import (
    ComplianceRulesError,
    DocumentError,
    EngineInvariantError,
    FactsError,
    Issue,
    NoVersionInForceError,
    PackError,
    PackInvalidError,
    PackNotFoundError,
)
from compliance_rules.facts import (
    Authorization,
    Block,
    BlockRef,
    CaStatus,
    EntityYear,
    GecStatus,
    HoldingStatus,
    KnownBlock,
    ListingFacts,
    OffsetUse,
    Period,
    Project,
    Registration,
    TransferFacts,
    Use,
    co2e,
)
from compliance_rules.facts_io import parse_listing, parse_transfer
from compliance_rules.loader import BUILTIN_PACKS, load_builtin, load_pack
from compliance_rules.pack import Confidence, Disposition, MigrationRules, RulePack, Source

__all__ = [
    "BUILTIN_PACKS",
    "Authorization",
    "Block",
    "BlockRef",
    "CaStatus",
    "ComplianceRulesError",
    "Confidence",
    "Decision",
    "Disposition",
    "DocumentError",
    "EngineInvariantError",
    "EntityYear",
    "FactsError",
    "GecStatus",
    "HoldingStatus",
    "Issue",
    "KnownBlock",
    "ListingDecision",
    "ListingFacts",
    "MigrationRules",
    "NoVersionInForceError",
    "OffsetLimitStatus",
    "OffsetUse",
    "PackError",
    "PackInvalidError",
    "PackNotFoundError",
    "Period",
    "Project",
    "Registration",
    "RulePack",
    "Source",
    "TransferFacts",
    "Use",
    "UseEligibility",
    "Violation",
    "co2e",
    "evaluate_listing",
    "evaluate_surrender",
    "evaluate_transfer",
    "load_builtin",
    "load_pack",
    "offset_limits",
    "parse_listing",
    "parse_transfer",
]
