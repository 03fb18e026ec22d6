"""Who may list a project no one has listed: a holder of its units at its registry of origin.

The first listing of a project makes its caller the project's lister: only they, or a
regulator, may list it again, replace its facts or have it refused (``projects``).  A
refused listing of a project no one has listed is its standing in that jurisdiction
too: its units are refused there until a listing that is not refused.  Taken on the
caller's word, either let anyone with the issuer role squat a project that is not
theirs.

So a caller whose token scopes it to accounts (an issuer's names them,
``accounts: ["verra:cascavel-spv"]``) lists, or is refused, a project no one has listed
only when the project's registry of origin (``bridge.ORIGIN_REGISTRY``) answers that one
of those accounts there holds units of the project, or held them: a block of the
project's program and id (a registry's mirrors keep their origin's program, which is
never the registry's own) in any state the registry lists under the account: active,
locked, bridged out (immobilized), retired, cancelled or surrendered.  Units that left
the registry altogether (exported) are no longer listed under the account, and prove
nothing.

A custody venue's account at the registry (``bridge.venue_account``) proves nothing: it
holds the venue's clients' units, and naming it in a token would let its bearer prove
every project any client of the venue holds.

A regulator proves nothing (it corrects any listing), nor does the one local party of an
insecure gateway, which no token scopes to accounts (``gateway.security.policy``).

The registry is read before the listing's transaction, never inside it (a transaction
held open across a registry call would hold the project's row, and on SQLite the whole
database, for as long as the registry takes), and it is read only while no one has
listed the project: a project's lister lists it again without asking, and anyone else is
refused in the listing's own transaction, against the row it locks.  A registry that
cannot be reached fails the listing (``RegistryUnavailable``, retried by the adapter
first): nothing is recorded, and the listing is never let through unproven.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy.orm import Session, sessionmaker

from registry_bridge.bridge import CUSTODY_VENUES, ORIGIN_REGISTRY, venue_account
from registry_bridge.errors import FailedPrecondition, PermissionDenied
from registry_bridge.listing import ProjectListing
from registry_bridge.model import Program
from registry_bridge.port import ListHoldingsRequest, RegistryPort, StillWanted
from registry_bridge.projects import lister


def _origin(listing: ProjectListing) -> tuple[Program, str]:
    """The project's program and its registry of origin.

    Raises:
        PermissionDenied: carbonlink links no registry that issues the program's units,
            so no holding can prove the caller's claim.
    """
    program = next((p for p in ORIGIN_REGISTRY if p.value == listing.program), None)
    if program is None:
        raise PermissionDenied(
            f"project {listing.program} {listing.project_id}: no registry carbonlink links "
            f"issues {listing.program!r} units, so no holding can prove the caller may list "
            "a project no one has listed"
        )
    return program, ORIGIN_REGISTRY[program]


def holds_units(
    port: RegistryPort,
    program: Program,
    project_id: str,
    accounts: Collection[str],
    still_wanted: StillWanted | None = None,
) -> bool:
    """Whether one of ``accounts`` at the port's registry holds, or held, units of the
    project that registry issued (see the module's docstring for which holdings count).

    Args:
        port: The project's registry of origin.
        program: The project's program.
        project_id: The project.
        accounts: Account ids at that registry, asked one after the other ('' is none).
        still_wanted: Whether the caller still waits (see ``port.StillWanted``).

    Raises:
        RegistryUnavailable: The registry could not be reached.
        RegistryRejected: The registry refused to list an account's holdings.
        Abandoned: ``still_wanted`` answered false.
    """
    for account in accounts:
        if not account:
            # An empty account asks for every account's holdings (a token naming
            # "verra:"): it names no account of the caller's, and proves nothing.
            continue
        for holding in port.list_holdings(ListHoldingsRequest(account), still_wanted):
            if holding.block.id.program is program and holding.block.project_id == project_id:
                return True
    return False


def check_first_lister(
    sessions: sessionmaker[Session],
    ports: Mapping[str, RegistryPort],
    listing: ProjectListing,
    accounts: Collection[str],
    still_wanted: StillWanted | None = None,
) -> None:
    """Refuse to list (or refuse) a project no one has listed for a caller who cannot prove
    it holds, or held, the project's units at its registry of origin.

    Args:
        sessions: The ledger database, read for the project's lister.
        ports: The registries the gateway is linked to, by id.
        listing: The project as the caller declares it.
        accounts: ``registry:account`` the caller's token names.
        still_wanted: Whether the caller still waits (see ``port.StillWanted``).

    Raises:
        PermissionDenied: No one has listed the project, and no account of ``accounts``
            at its registry of origin holds or held units of it (or the program has no
            registry of origin).
        FailedPrecondition: The gateway is not linked to the project's registry of origin.
        RegistryUnavailable: The registry of origin could not be reached.
        RegistryRejected: The registry refused to list an account's holdings.
        Abandoned: ``still_wanted`` answered false.
    """
    if lister(sessions, listing.program, listing.project_id) is not None:
        return
    program, registry = _origin(listing)
    project = f"project {program.value} {listing.project_id}"
    port = ports.get(registry)
    if port is None:
        raise FailedPrecondition(
            f"{project}: the gateway is not linked to {registry}, the registry of origin of "
            f"{program.value} units, so the caller's holding of the project cannot be checked"
        )
    prefix = f"{registry}:"
    named = sorted(a.removeprefix(prefix) for a in accounts if a.startswith(prefix))
    # A custody venue's account holds its clients' units, whoever they are: it proves no
    # one's own holding, whoever's token names it.
    custody = {venue_account(venue): venue for venue in CUSTODY_VENUES}
    own = [a for a in named if a not in custody]
    not_proof = "".join(
        f"; {a} is the {custody[a]} custody venue's account, holding its clients' units, and "
        "proves no one's own holding"
        for a in named
        if a in custody
    )
    rule = (
        "only an issuer holding, or having held, units of a project at its registry of "
        "origin may list a project no one has listed, or have it refused"
    )
    if not named:
        raise PermissionDenied(
            f"{project}: the caller's token names no account at {registry}, the registry of "
            f"origin of {program.value} units, to prove a holding of the project: {rule}"
        )
    if not own or not holds_units(port, program, listing.project_id, own, still_wanted):
        asked = f" ({', '.join(own)})" if own else ""
        raise PermissionDenied(
            f"{project}: no account of the caller at {registry}{asked} holds or held units "
            f"of the project, as {registry} answers{not_proof}: {rule}"
        )
