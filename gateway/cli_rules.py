"""The ``carbonlink rules`` commands: validate rule packs and evaluate facts against one.

``gateway.cli`` calls :func:`register` with its subparsers; each handler is stored as the
``handler`` default of the parsed namespace and returns the process exit code.  Parsing
loads no rules engine (the help's pack and use names are ``gateway.rule_names``): each
handler imports the engine when it runs.

``rules validate PACK...``
    PACK is a built-in pack name (``shenzhen``, ``national``, ``guangdong``, ``hkmo``,
    ``corsia``, ``article6-bri``, ``baseline``) or a path to a YAML/JSON pack file. Exit 0
    when every pack is valid; otherwise every error of every pack is printed with its JSON
    path and the exit code is 1.

``rules evaluate --pack P (--use U | --listing) --facts FILE [--clock YYYY-MM-DD] [--json]``
    Decides the facts in FILE (JSON when it ends in ``.json``, YAML otherwise) against pack
    P for use U (``compliance``, ``voluntary_retirement``, ``listing``, ``corsia``). The clock
    defaults to today; rules never read the clock themselves. With ``--json`` the decision is
    printed as ``{"allowed": bool, "violations": [{"rule_id", "message", "source", "blocks",
    "detail", "details", "unconfirmed_params"}], "pack", "pack_version", "use",
    "evaluated_rules", "unconfirmed_params", "deferred_rules"}``. Exit 0 when allowed, 1
    when denied, 2 when the pack, the use, the clock or the facts are invalid (the error
    names the field).

    The facts document of a transfer (all quantities are integers in tCO2e; a non-CO2 block
    names the IPCC report its tCO2e were converted with, and the pack's own report
    re-expresses it in Decimal arithmetic, never binary floats)::

        destination_country: CN          # ISO alpha-2 of where the units land (default CN)
        compliance_year: 2026            # optional, without an entity: the obligation's year
                                         # (a CORSIA offsetting obligation), as below
        entity:                          # required for compliance (offset limits)
          entity_id: SZ-0001
          compliance_year: 2023          # chooses the pack version: the one in force on the
                                         # year's last day, or on the day of the pack's
                                         # compliance cycle holding the year; a cycle that
                                         # closed before the clock refuses the use
          verified_emissions: 100000
          allowances_due: 100000
          covered_by_national_ets: false
          offsets_surrendered: [{program: CCER, quantity: 3000, country: CN, region: Guangdong}]
        blocks:
          - serial_series: ""            # namespace in the program (Gold Standard batches)
            serial_start: 1              # inclusive
            serial_end: 1000             # inclusive
            vintage_start: 2021-01-01
            vintage_end: 2021-12-31
            gas: CO2                     # CH4, N2O, SF6 ... need gwp_basis
            gwp_basis: AR5               # SAR (AR2), AR4, AR5 or AR6: the issuer's GWP report
            authorization: {letter_id: L-1, host_country: KE, authorized_uses: [ndc, oimp]}
            ca_status: not_applicable    # not_applicable | pending | applied
            labels: []                   # corsia_eligible, tokenized, verra_consent ...
            gec_status: none             # none | frozen | cancelled | active | traded
            project:
              program: CCER
              project_id: "001"
              country: CN
              region: Guangdong          # or "Guangdong/Meizhou"; a list naming cities
              city: Meizhou              # is not satisfied by a province alone
              project_type: wind
              start_date: 2016-03-01
              construction_start: 2015-06-01
              labels: []                 # pre_cdm ...
              registrations: [{program: VCS, project_id: "1060",
                               issued_periods: [{start: 2019-01-01, end: 2019-12-31}]}]
        known_blocks:                    # other blocks the gateway knows of, with status
          - {program: VCS, serial_start: 1, serial_end: 10, status: retired, registry: verra}

    With ``--listing`` FILE is the project ``carbonlink project list`` sends to ListProject
    instead (YAML or JSON, the fields of ``carbonlink.v1.Project``: program, project_id,
    country, region, project_type, start_date, crediting_period_start/end,
    other_registrations, authorization, labels...), read, checked and converted to the
    rules' facts exactly as ListProject does (``registry_bridge.listing_rules.listing_facts``
    and ``decide_listing``); a field ListProject would refuse is named and exits 2. The
    output lists, per use of the pack, whether the project's units would be eligible, and
    whether the project is refused (exit 0 unless refused): by the market's own listing
    rules, so a project they refuse, or any project where the version in force has no
    listing rule (CR-ENGINE-0002), is refused, as is one issued twice; CORSIA's pack, no
    market, only answers per use. The units land where ListProject lands them in the pack's
    market (``CN``, ``HK`` for hkmo, none for article6-bri or a pack no jurisdiction lists
    under). ``--use`` is refused with ``--listing``: no listing rule depends on an intended
    use (the listing use admits the project, and every use of the pack is answered), and
    ListProject takes none.

    The full shape is documented in ``compliance_rules.facts_io``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.rule_names import BUILTIN_PACKS, USES

if TYPE_CHECKING:
    from compliance_rules import Decision, ListingDecision, RulePack

EXIT_OK = 0
EXIT_DENIED = 1
"""``rules evaluate``: the decision is a denial. ``rules validate``: a pack is invalid."""
EXIT_INVALID = 2
"""Bad input: unknown pack, unreadable or malformed facts, bad use or clock."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rules validate`` and ``rules evaluate`` to the CLI.

    Args:
        subparsers: The top-level CLI's subparsers.
    """
    rules = subparsers.add_parser("rules", help="validate rule packs and evaluate facts")
    commands = rules.add_subparsers(dest="rules_command", required=True)

    validate = commands.add_parser(
        "validate",
        help="check rule packs against the pack schema",
        description="Validate each PACK and print every error with its JSON path.",
    )
    validate.add_argument(
        "packs",
        nargs="+",
        metavar="PACK",
        help=f"built-in pack name ({', '.join(BUILTIN_PACKS)}) or path to a YAML/JSON pack",
    )
    validate.set_defaults(handler=handle_validate)

    evaluate = commands.add_parser(
        "evaluate",
        help="decide facts against a rule pack",
        description="Evaluate the facts in FILE against pack P for use U (a listing: for "
        "every use of P). Exits 1 when "
        "denied (with --listing: when the project is refused), 2 on bad input.",
    )
    evaluate.add_argument("--pack", required=True, metavar="P", help="pack name or path")
    evaluate.add_argument(
        "--use",
        metavar="U",
        help=f"the transfer's use, one of: {', '.join(USES)} (required "
        "without --listing; refused with it: a listing is decided for every use)",
    )
    evaluate.add_argument(
        "--facts", required=True, type=Path, metavar="FILE", help="facts as JSON or YAML"
    )
    evaluate.add_argument(
        "--clock", metavar="YYYY-MM-DD", help="the date to decide on (default: today)"
    )
    evaluate.add_argument(
        "--listing",
        action="store_true",
        help="FILE is a project as `project list` sends it (the fields of carbonlink.v1."
        "Project), not a transfer: decided as the gateway's ListProject decides it, for every "
        "use of the pack (so without --use)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the decision as JSON")
    evaluate.set_defaults(handler=handle_evaluate)


def handle_validate(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Validate every pack named in ``args.packs``, reporting every error.

    Args:
        args: Namespace with ``packs``.
        stdout: Where the result per pack goes (default ``sys.stdout``).
        stderr: Where errors go (default ``sys.stderr``).

    Returns:
        ``EXIT_OK`` when every pack is valid, else ``EXIT_DENIED``.
    """
    from compliance_rules import PackInvalidError, PackNotFoundError, load_pack

    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    failed = False
    for name in args.packs:
        try:
            pack = load_pack(name)
        except PackInvalidError as exc:
            failed = True
            print(f"{name}: invalid ({len(exc.issues)} error(s))", file=err)
            for issue in exc.issues:
                print(f"  {issue.path}: {issue.message}", file=err)
            continue
        except PackNotFoundError as exc:
            failed = True
            print(f"{name}: {exc}", file=err)
            continue
        rules = len(pack.rule_ids)
        print(f"{name}: valid ({len(pack.versions)} version(s), {rules} rule(s))", file=out)
    return EXIT_DENIED if failed else EXIT_OK


def _print_decision(decision: Decision, out: TextIO) -> None:
    verdict = "ALLOWED" if decision.allowed else "DENIED"
    print(
        f"{verdict} by {decision.pack} (version {decision.pack_version}) for {decision.use.value}",
        file=out,
    )
    for v in decision.violations:
        print(f"  {v.rule_id}: {v.message}", file=out)
        if v.detail:
            print(f"    {v.detail}", file=out)
        print(f"    source: {v.source}", file=out)
        if v.unconfirmed_params:
            print(f"    relies on unconfirmed: {', '.join(v.unconfirmed_params)}", file=out)


def _print_listing(decision: ListingDecision, out: TextIO) -> None:
    head = "REFUSED" if decision.refused else "LISTABLE"
    print(
        f"{head}: {decision.program} project {decision.project_id} in {decision.pack} "
        f"(version {decision.pack_version})",
        file=out,
    )
    for v in decision.refusals:
        print(f"  {v.rule_id}: {v.detail or v.message}", file=out)
    for u in decision.uses:
        print(f"  {u.use.value}: {'eligible' if u.eligible else 'not eligible'}", file=out)
        for v in u.violations:
            print(f"    {v.rule_id}: {v.detail or v.message}", file=out)
        if u.conditions:
            print(f"    checked per transfer: {', '.join(u.conditions)}", file=out)


def _decide_listing(path: Path, pack: RulePack, clock: date) -> ListingDecision:
    """The project in ``path`` (as ``project list`` sends it) decided as ListProject decides
    it: read and checked by the gateway's own conversion, its facts made by the listing
    rules' one conversion, landing where ListProject lands units in the pack's market
    (nowhere in particular for a pack no jurisdiction lists under).

    Raises:
        DocumentError: The file is unreadable or not a project.
        InvalidRequest: A field ListProject would refuse (named).
    """
    from compliance_rules import DocumentError
    from gateway.cli_project import read_project
    from gateway.convert import project_from_pb
    from registry_bridge.listing_rules import decide_listing, listing_facts, market_destination

    try:
        message = read_project(path)
    except ValueError as exc:
        raise DocumentError(str(exc)) from exc
    project = project_from_pb(message)
    facts = listing_facts(project, market_destination(pack.name) or "")
    return decide_listing(pack, facts, clock)


def handle_evaluate(
    args: argparse.Namespace,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    today: date | None = None,
) -> int:
    """Evaluate ``args.facts`` against ``args.pack`` for ``args.use``.

    Args:
        args: Namespace with ``pack``, ``use``, ``facts``, ``clock``, ``listing`` and ``json``.
        stdout: Where the decision goes (default ``sys.stdout``).
        stderr: Where errors go (default ``sys.stderr``).
        today: The clock when ``--clock`` is not given (default: the system date, read here
            at the edge so that no rule ever reads it).

    Returns:
        ``EXIT_OK`` when allowed, ``EXIT_DENIED`` when denied, ``EXIT_INVALID`` on bad input.
    """
    from compliance_rules import (
        ComplianceRulesError,
        DocumentError,
        FactsError,
        NoVersionInForceError,
        PackInvalidError,
        PackNotFoundError,
        Use,
        evaluate_transfer,
        load_pack,
        parse_transfer,
    )
    from compliance_rules.loader import read_document
    from registry_bridge.errors import InvalidRequest

    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    prog = "carbonlink rules evaluate"
    try:
        clock = date.fromisoformat(args.clock) if args.clock else (today or date.today())
    except ValueError:
        print(f"{prog}: --clock: {args.clock!r} is not a date (YYYY-MM-DD)", file=err)
        return EXIT_INVALID
    allowed = ", ".join(USES)
    if args.listing and args.use is not None:
        # A listing's rules are the pack's for every use, its refusal the listing use's, and
        # ListProject takes no use: a --use here would be ignored, so it is refused.
        print(
            f"{prog}: --use: means nothing with --listing (a listing is decided for every use "
            "of the pack, as ListProject decides it): leave it out",
            file=err,
        )
        return EXIT_INVALID
    if not args.listing and args.use is None:
        print(f"{prog}: --use is required for a transfer (one of: {allowed})", file=err)
        return EXIT_INVALID
    use = None
    if args.use is not None:
        try:
            use = Use(args.use)
        except ValueError:
            print(f"{prog}: --use: {args.use!r} is not one of: {allowed}", file=err)
            return EXIT_INVALID
    try:
        pack = load_pack(args.pack)
        if use is None:
            listing = _decide_listing(args.facts, pack, clock)
        else:
            decision = evaluate_transfer(
                pack, parse_transfer(read_document(args.facts), use), clock
            )
    except InvalidRequest as exc:
        # A listing's field ListProject would refuse, named as the gateway names it.
        print(f"{prog}: --facts {args.facts}: {exc}", file=err)
        return EXIT_INVALID
    except PackInvalidError as exc:
        print(f"{prog}: --pack: {exc}", file=err)
        return EXIT_INVALID
    except FactsError as exc:
        print(f"{prog}: --facts {args.facts}: field {exc.field}: {exc.reason}", file=err)
        return EXIT_INVALID
    except DocumentError as exc:
        print(f"{prog}: --facts {args.facts}: {exc}", file=err)
        return EXIT_INVALID
    except PackNotFoundError as exc:
        print(f"{prog}: --pack: {exc}", file=err)
        return EXIT_INVALID
    except NoVersionInForceError as exc:
        print(f"{prog}: {exc}", file=err)
        return EXIT_INVALID
    except ComplianceRulesError as exc:
        print(f"{prog}: {exc}", file=err)
        return EXIT_INVALID
    if args.listing:
        if args.json:
            _dump(listing.to_json(), out)
        else:
            _print_listing(listing, out)
        return EXIT_DENIED if listing.refused else EXIT_OK
    if args.json:
        _dump(decision.to_json(), out)
    else:
        _print_decision(decision, out)
    return EXIT_OK if decision.allowed else EXIT_DENIED


def _dump(view: dict[str, Any], out: TextIO) -> None:
    print(json.dumps(view, indent=2, ensure_ascii=False), file=out)
