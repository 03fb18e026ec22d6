"""The engine: facts in, decision out. Pure; the clock is a parameter.

Which pack version applies: for a request with a compliance year (an entity's, or an
obligation's named without one), the version in force on the last day of that year (the rules
that govern the year's compliance), or, for a year of a compliance cycle the pack declares, on
the cycle's ``rules_on`` day (the rules the cycle was complied under: the national ETS's
2019-2020 cycle, under the measures of 2021); otherwise the version in force on ``clock``. The
baseline pack (double counting) is applied under every scheme pack, its version chosen on the
same day. ``clock`` stays today's date whatever day chose the version: a cycle that closes at
its deadline refuses a use decided after it (``CR-ENGINE-0004``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date

from compliance_rules.checks import (
    ENTITY_KINDS,
    AuthorizationRequired,
    ReuseAfterCancellation,
    build_rule,
    offset_limit_figures,
)
from compliance_rules.decision import (
    Decision,
    ListingDecision,
    OffsetLimitStatus,
    UseEligibility,
    Violation,
)
from compliance_rules.facts import (
    Block,
    EntityYear,
    KnownBlock,
    ListingFacts,
    TransferFacts,
    Use,
)
from compliance_rules.loader import BASELINE_PACK, load_builtin
from compliance_rules.pack import ComplianceCycle, Confidence, PackVersion, RulePack, RuleSpec
from compliance_rules.rules import (
    CYCLE_CLOSED,
    ENGINE_SOURCE,
    NO_BLOCKS,
    USE_NOT_SUPPORTED,
    AllOf,
    Context,
    Rule,
    Scope,
    Subject,
)


def decision_date(pack: RulePack, facts: TransferFacts, clock: date) -> date:
    """The date whose rules apply: the compliance year's decision day if any, else the clock.

    Args:
        pack: The scheme's pack (its compliance cycles move some years' decision day).
        facts: The request.
        clock: Today, as injected by the caller.

    Returns:
        The date to choose pack versions by (see :meth:`RulePack.decision_day`).
    """
    year = facts.obligation_year
    return clock if year is None else pack.decision_day(year)


def _cycle(pack: RulePack, facts: TransferFacts) -> ComplianceCycle | None:
    year = facts.obligation_year
    return None if year is None else pack.cycle_for(year)


def _unconfirmed_cycle(pack: RulePack, facts: TransferFacts) -> tuple[str, ...]:
    """The pack's unconfirmed compliance cycle the decision's version was chosen by, if any."""
    cycle = _cycle(pack, facts)
    if cycle is None or cycle.confidence is not Confidence.UNCONFIRMED:
        return ()
    return (f"{pack.name}:{cycle.name}",)


def _cycle_closed(pack: RulePack, facts: TransferFacts, clock: date) -> list[Violation]:
    """A refusal when the request's compliance cycle closed at its deadline before ``clock``.

    Decided apart from the pack's rules because the version those rules come from is chosen
    for the cycle, not for today: only the clock can tell that the cycle is over.
    """
    cycle = _cycle(pack, facts)
    if cycle is None or not cycle.closed_on(clock):
        return []
    return [
        Violation(
            rule_id=CYCLE_CLOSED,
            message=(
                "The compliance cycle closed at its surrender deadline: units used now do not "
                "count toward it"
            ),
            source=cycle.source,
            blocks=tuple(sorted(b.ref for b in facts.blocks)),
            detail=(
                f"{pack.name} {cycle.name} ({cycle.first_year}-{cycle.last_year}) had to be met "
                f"by {cycle.surrender_deadline.isoformat()}; a use for "
                f"{facts.obligation_year} decided on {clock.isoformat()} is after it"
            ),
            details=(
                ("cycle", cycle.name),
                ("surrender_deadline", cycle.surrender_deadline.isoformat()),
                ("decided_on", clock.isoformat()),
            ),
        )
    ]


def _specs(
    pack: RulePack, baseline: RulePack | None, day: date, use: Use
) -> tuple[PackVersion, list[RuleSpec]]:
    version = pack.version_for(day)
    specs = [s for s in version.rules if use in s.uses]
    if baseline is not None and not pack.baseline:
        specs += [s for s in baseline.version_for(day).rules if use in s.uses]
    return version, specs


def _unconfirmed(pack: RulePack, rules: Sequence[Rule]) -> tuple[str, ...]:
    return tuple(sorted({f"{pack.name}:{n}" for r in rules for n in r.unconfirmed_params}))


def default_baseline() -> RulePack:
    """The built-in baseline pack (double issuance, double use)."""
    return load_builtin(BASELINE_PACK)


def evaluate_transfer(
    pack: RulePack,
    facts: TransferFacts,
    clock: date,
    *,
    baseline: RulePack | None = None,
    defer_entity_rules: bool = False,
) -> Decision:
    """Decide whether blocks may move to ``pack``'s jurisdiction for ``facts.use``.

    Every rule in force for the use is evaluated and every violation is returned; any
    violation denies (deny-overrides). The baseline pack's double-counting rules apply too.

    Args:
        pack: The destination scheme's pack.
        facts: The blocks, the use, the entity (or the obligation's compliance year) and the
            known blocks elsewhere.
        clock: Today (injected; no rule reads the system clock). It chooses the version when
            the request names no compliance year, and says whether the year's cycle has
            closed when it does.
        baseline: The baseline pack; the built-in one when ``None``.
        defer_entity_rules: The request moves units toward compliance (into an entity's
            account) but is not the surrender: when it names no entity, the rules decided on
            the entity's compliance year (offset limits, local share, carve-outs) are left to
            the surrender and listed in ``Decision.deferred_rules`` instead of failing closed.
            Without this flag a missing entity fails those rules closed.

    Returns:
        The decision.

    Raises:
        NoVersionInForceError: The pack has no version in force on the decision date.
    """
    base = default_baseline() if baseline is None else baseline
    day = decision_date(pack, facts, clock)
    version, specs = _specs(pack, base, day, facts.use)
    deferred: tuple[str, ...] = ()
    if defer_entity_rules and facts.entity is None:
        deferred = tuple(sorted(s.rule_id for s in specs if s.kind in ENTITY_KINDS))
        specs = [s for s in specs if s.kind not in ENTITY_KINDS]
    rules = [build_rule(s) for s in specs]
    # Only a rule in force for the request (not deferred) releases anything.
    released = frozenset(
        pair
        for r in rules
        if isinstance(r, ReuseAfterCancellation)
        for pair in r.released(facts.obligation_year)
    )
    ctx = Context.for_transfer(facts, clock, version, _cycle(pack, facts), released)
    violations = []
    if facts.use not in version.uses:
        violations.append(
            Violation(
                rule_id=USE_NOT_SUPPORTED,
                message="The pack does not provide for this use",
                source=ENGINE_SOURCE,
                detail=(
                    f"{pack.name} (version {version.effective_from}) provides for "
                    f"{', '.join(sorted(u.value for u in version.uses))}, not {facts.use.value}"
                ),
            )
        )
    if not facts.blocks:
        violations.append(
            Violation(
                rule_id=NO_BLOCKS,
                message="A request without blocks is refused (fail closed)",
                source=ENGINE_SOURCE,
            )
        )
    else:
        violations.extend(AllOf(rules).evaluate(ctx))
    violations.extend(_cycle_closed(pack, facts, clock))
    cycle = _unconfirmed_cycle(pack, facts)
    if cycle:
        # The pack's own rules, and its cycle's closing, were chosen by the cycle: each
        # refusal rests on it too.
        own = {s.rule_id for s in version.rules} | {CYCLE_CLOSED}
        violations = [
            dataclasses.replace(v, unconfirmed_params=(*v.unconfirmed_params, *cycle))
            if v.rule_id in own
            else v
            for v in violations
        ]
    violations.sort(key=Violation.sort_key)
    return Decision(
        allowed=not violations,
        violations=tuple(violations),
        pack=pack.name,
        pack_version=version.effective_from,
        use=facts.use,
        evaluated_rules=tuple(sorted(r.rule_id for r in rules)),
        unconfirmed_params=tuple(sorted({*_unconfirmed(pack, rules), *cycle})),
        deferred_rules=deferred,
    )


def evaluate_surrender(
    pack: RulePack,
    entity: EntityYear,
    blocks: Sequence[Block],
    clock: date,
    *,
    destination_country: str = "CN",
    known_blocks: Sequence[KnownBlock] = (),
    baseline: RulePack | None = None,
) -> Decision:
    """Decide a compliance surrender of offsets and allowances for an entity's year.

    A surrender over an offset limit is refused with a violation whose ``details`` carry
    ``limit``, ``already_used`` and ``asked`` (tCO2e).

    Args:
        pack: The scheme the entity complies under.
        entity: The entity's compliance year, with offsets already surrendered.
        blocks: The blocks to surrender.
        clock: Today (injected).
        destination_country: Where the scheme is.
        known_blocks: Other blocks the gateway knows of (double counting).
        baseline: The baseline pack; the built-in one when ``None``.

    Returns:
        The decision.
    """
    facts = TransferFacts(
        use=Use.COMPLIANCE,
        blocks=tuple(blocks),
        destination_country=destination_country,
        entity=entity,
        known_blocks=tuple(known_blocks),
    )
    return evaluate_transfer(pack, facts, clock, baseline=baseline)


def offset_limits(pack: RulePack, entity: EntityYear) -> tuple[OffsetLimitStatus, ...]:
    """Where an entity stands against each offset limit of its compliance year.

    Args:
        pack: The scheme the entity complies under.
        entity: The entity's year.

    Returns:
        One status per ``offset_limit`` rule of the version governing the year.

    Raises:
        NoVersionInForceError: No version governs the year.
    """
    version = pack.version_for_year(entity.compliance_year)
    out = []
    for spec in version.rules:
        if spec.kind != "offset_limit":
            continue
        limit, used, programs = offset_limit_figures(spec, entity)
        out.append(
            OffsetLimitStatus(
                rule_id=spec.rule_id,
                limit=limit,
                already_used=used,
                remaining=max(limit - used, 0),
                programs=programs,
            )
        )
    return tuple(out)


def evaluate_listing(
    pack: RulePack,
    listing: ListingFacts,
    clock: date,
    *,
    baseline: RulePack | None = None,
    market: bool = False,
) -> ListingDecision:
    """Which uses a project's units would be eligible for in ``pack``'s jurisdiction.

    Only rules about the project and its periods are decided here, and the issuing country
    of a letter of authorization the owner declares (a foreign letter breaks the pack's
    authorization rule for each use it covers); unit-level and request-level rules are
    returned as ``conditions`` checked on each transfer. A project
    whose reductions for a period are already issued under another program is refused.
    So is one the pack's listing rules refuse: the listing use is what admits units to be
    held and traded in the market (the gate checks every holding transfer under it), so
    a project it refuses is not listed, whatever other use its program would be eligible
    for (SZA are surrendered in Shenzhen, but CR-SZ-0009 does not accept them for
    listing). A market's pack version without a listing use admits no project (fail
    closed: no rule speaks to it); a pack that is no market (CORSIA's) only answers per use.

    Args:
        pack: The destination scheme's pack.
        listing: The project and the periods it would bring in.
        clock: Today (injected); chooses the pack version.
        baseline: The baseline pack; the built-in one when ``None``.
        market: ``pack`` is a market's, whose listing use admits projects to it.

    Returns:
        The listing decision.
    """
    base = default_baseline() if baseline is None else baseline
    version = pack.version_for(clock)
    subjects = tuple(Subject(listing.project, p) for p in listing.periods)
    refusals: dict[tuple[str, str], Violation] = {}
    uses: list[UseEligibility] = []
    for use in sorted(version.uses):
        _, specs = _specs(pack, base, clock, use)
        rules = [build_rule(s) for s in specs]
        ctx = Context(use, subjects, clock, version, listing.destination_country)
        now = [r for r in rules if r.scope is Scope.SUBJECT]
        later = tuple(sorted(r.rule_id for r in rules if r.scope is not Scope.SUBJECT))
        found = AllOf(now).evaluate(ctx) if subjects else []
        if not subjects:
            found = [
                Violation(
                    rule_id=NO_BLOCKS,
                    message="A listing without monitoring periods is refused (fail closed)",
                    source=ENGINE_SOURCE,
                )
            ]
        if listing.authorization is not None:
            # The letter's country is settled once it is declared; the rule stays a
            # condition for what each unit's letter authorizes.
            for rule in rules:
                if isinstance(rule, AuthorizationRequired):
                    found.extend(rule.check_declared(listing.project, listing.authorization))
            found.sort(key=Violation.sort_key)
        for v in found:
            spec_kind = next((s.kind for s in specs if s.rule_id == v.rule_id), "")
            if spec_kind == "double_issuance_project":
                refusals[(v.rule_id, v.detail)] = v
        uses.append(UseEligibility(use, not found, tuple(found), later))
    admission = next((u for u in uses if u.use is Use.LISTING), None)
    if admission is not None:
        for v in admission.violations:
            refusals[(v.rule_id, v.detail)] = v
    elif market:
        unsupported = Violation(
            rule_id=USE_NOT_SUPPORTED,
            message="The pack does not provide for listing",
            source=ENGINE_SOURCE,
            detail=(
                f"{pack.name} (version {version.effective_from}) provides for "
                f"{', '.join(sorted(u.value for u in version.uses))}, not listing"
            ),
        )
        refusals[(unsupported.rule_id, unsupported.detail)] = unsupported
    refused = bool(refusals)
    if refused:
        # Every use says why it is not eligible: a use whose own rules pass is refused by
        # the listing's refusal.
        uses = [
            UseEligibility(
                u.use,
                False,
                tuple(
                    sorted(
                        {
                            (v.rule_id, v.detail): v for v in (*u.violations, *refusals.values())
                        }.values(),
                        key=Violation.sort_key,
                    )
                ),
                u.conditions,
            )
            for u in uses
        ]
    return ListingDecision(
        pack=pack.name,
        pack_version=version.effective_from,
        program=listing.project.program,
        project_id=listing.project.project_id,
        refused=refused,
        refusals=tuple(sorted(refusals.values(), key=Violation.sort_key)),
        uses=tuple(uses),
    )
