"""``carbonlink migrate plan|execute|get|abandon`` and ``carbonlink entity import|withdraw``.

Clients of a running gateway, like ``carbonlink transfer``: they speak the public gRPC API
(``--target``) and print a short summary or, with ``--json``, the resource in protobuf's
JSON mapping.  Parsing loads neither gRPC nor the generated messages: each handler
imports them when it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import client_security
from gateway.cli_client import _common, account_ref, int32, request_id_flag
from registry_bridge.covered_entities import CoveredEntity, parse_entities, validate_entity
from registry_bridge.errors import InvalidRequest

if TYPE_CHECKING:
    from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2


def _request(args: argparse.Namespace) -> gateway_pb2.PlanMigrationRequest:
    from adapters._pb.carbonlink.v1 import gateway_pb2
    from gateway.client_commands import account_to_pb

    destination = args.destination_account
    return gateway_pb2.PlanMigrationRequest(
        entity_id=args.entity,
        from_jurisdiction=args.source,
        to_jurisdiction=args.destination,
        first_year=args.from_year,
        acknowledged_warnings=args.acknowledge,
        destination_account=None if destination is None else account_to_pb(destination),
    )


def _range(block: model_pb2.BlockId) -> str:
    """As the gateway's messages name a block: a mirror's series told from its origin."""
    series = f"/{block.serial_series}" if block.serial_series else ""
    return f"{block.program}{series} {block.serial_start}-{block.serial_end}"


def _plan_summary(plan: gateway_pb2.MigrationPlan) -> str:
    lines = [
        f"{plan.entity_id}: {plan.from_jurisdiction} -> {plan.to_jurisdiction} from "
        f"{plan.first_year} ({plan.pack_version or 'no pack version'})",
        f"  final pilot year {plan.final_pilot_year}: verified {plan.verified_emissions}, "
        f"due {plan.allowances_due}, surrendered {plan.units_surrendered} "
        f"({plan.allowances_surrendered} allowances + {plan.offsets_surrendered} offsets), "
        + (f"shortfall {plan.shortfall}" if plan.shortfall >= 0 else f"surplus {-plan.shortfall}"),
    ]
    if plan.HasField("destination_account"):
        account = plan.destination_account
        lines.append(
            f"  national registration: {account.registry}/{account.account} (execute with "
            f"--destination-account {account.registry}:{account.account} to pin it)"
        )
    lines += [
        f"  {d.action:14} {_range(d.holding.block.id)}: {d.reason}" for d in plan.dispositions
    ]
    lines += [f"  BLOCKED {v.rule_id}: {v.message}" for v in plan.blocking_violations]
    lines += [f"  warning {v.rule_id}: {v.message}" for v in plan.warnings]
    lines.append("  executable" if plan.executable else "  not executable")
    return "\n".join(lines)


def _migration_summary(migration: gateway_pb2.Migration) -> str:
    lines = [f"{migration.name} {migration.state}"]
    if migration.failure_reason:
        lines[0] += f": {migration.failure_reason}"
    if migration.HasField("abandonment"):
        given_up = migration.abandonment
        at = given_up.abandoned_at.ToDatetime().isoformat(timespec="seconds")
        lines.append(
            f"  abandoned by {given_up.abandoned_by or 'the local caller'} at {at}Z "
            f"(request {given_up.request_id}): {given_up.reason}"
        )
    for s in migration.steps:
        lines.append(f"  step {s.seq} {s.kind} {s.state}: {s.description}")
        # A step's attempts are shown once there is more to them than the step's line: a
        # retry, or units an attempt left alone.
        if len(s.attempts) > 1 or any(a.left for a in s.attempts):
            lines += _attempt_lines(s.attempts)
    return "\n".join(lines)


def _attempt_lines(attempts: Sequence[gateway_pb2.MigrationStepAttempt]) -> list[str]:
    lines = []
    for a in attempts:
        line = f"    attempt {a.attempt} {a.state} ({a.operation})"
        if a.units:
            line += ": " + ", ".join(_range(b) for b in a.units)
        if a.transfer:
            line += f" [{a.transfer}]"
        lines.append(line)
        if a.error:
            lines.append(f"      error: {a.error}")
        lines += [f"      left {_range(x.block)}: {x.reason}" for x in a.left]
    return lines


def _plan(args: argparse.Namespace) -> int:
    from gateway.client_commands import EXIT_OK, EXIT_REFUSED, call, print_message

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        plan = stub.PlanMigration(_request(args), timeout=args.timeout)
        print_message(plan, args, _plan_summary(plan))
        return EXIT_OK if plan.executable else EXIT_REFUSED

    return call(args, invoke)


def _fitting_request_id(derived: str, kind: str) -> str:
    """``derived`` as a request id, or, past a request id's length (a long entity id
    would make one the gateway refuses), ``kind-`` and its digest: as stable, so a re-run
    of the same command still resumes."""
    from gateway.convert import MAX_ID_LENGTH

    if len(derived) <= MAX_ID_LENGTH:
        return derived
    return f"{kind}-{hashlib.sha256(derived.encode()).hexdigest()}"


def _derived_request_id(args: argparse.Namespace) -> str:
    """The default request id of ``migrate execute``: derived, not random, so re-running
    the same command resumes the same migration instead of being refused as a second one."""
    return _fitting_request_id(
        f"migrate-{args.entity}-{args.source}-{args.destination}-{args.from_year}", "migrate"
    )


def _next_step(name: str, state: str, request_id: str) -> str:
    """What the caller of an unfinished migration does next."""
    if state == "failed":
        return (
            f"carbonlink: {name} failed: once the cause is settled, run the same command "
            f"again (request id {request_id}): the failed step is tried again over the units "
            "still held, the rest of the steps waiting until then; a cause that will not go "
            f"away: `carbonlink migrate abandon {name} --reason TEXT` gives it up (what is "
            "done stays done) and lets the entity plan again"
        )
    return (
        f"carbonlink: {name} is {state}: the gateway carries it on by itself; "
        f"`carbonlink migrate get {name}` shows where it stands"
    )


def _execute(args: argparse.Namespace) -> int:
    from adapters._pb.carbonlink.v1 import gateway_pb2
    from gateway.client_commands import EXIT_OK, EXIT_REFUSED, call, print_message

    request = gateway_pb2.ExecuteMigrationRequest(
        request_id=args.request_id or _derived_request_id(args), plan=_request(args)
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "ExecuteMigration", request)
        migration = stub.ExecuteMigration(request, timeout=args.timeout)
        print_message(migration, args, _migration_summary(migration))
        if migration.state == "completed":
            return EXIT_OK
        print(_next_step(migration.name, migration.state, request.request_id), file=sys.stderr)
        return EXIT_REFUSED

    return call(args, invoke, request.request_id)


def _get(args: argparse.Namespace) -> int:
    from adapters._pb.carbonlink.v1 import gateway_pb2
    from gateway.client_commands import EXIT_OK, call, print_message

    name = _migration_name(args.name)

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        migration = stub.GetMigration(
            gateway_pb2.GetMigrationRequest(name=name), timeout=args.timeout
        )
        print_message(migration, args, _migration_summary(migration))
        return EXIT_OK

    return call(args, invoke)


def _migration_name(name: str) -> str:
    return name if name.startswith("migrations/") else f"migrations/{name}"


def _abandon(args: argparse.Namespace) -> int:
    from adapters._pb.carbonlink.v1 import gateway_pb2
    from gateway.client_commands import EXIT_OK, call, print_message

    name = _migration_name(args.name)
    request = gateway_pb2.AbandonMigrationRequest(
        # Derived, not random: re-running the same command answers the same abandonment.
        request_id=args.request_id
        or _fitting_request_id(f"abandon-{name.removeprefix('migrations/')}", "abandon"),
        name=name,
        reason=args.reason,
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        client_security.sign(args, "AbandonMigration", request)
        migration = stub.AbandonMigration(request, timeout=args.timeout)
        print_message(migration, args, _migration_summary(migration))
        return EXIT_OK

    return call(args, invoke, request.request_id)


def _entity_request_id(batch: str, entity_id: str) -> str:
    """The request id of one entity of an import: ``BATCH:ENTITY`` (see
    :func:`_fitting_request_id`; a long --request-id too)."""
    return _fitting_request_id(f"{batch}:{entity_id}", "entity")


def _upsert_request(batch: str, entity: CoveredEntity) -> gateway_pb2.UpsertCoveredEntityRequest:
    from adapters._pb.carbonlink.v1 import gateway_pb2
    from gateway.convert import entity_to_pb

    return gateway_pb2.UpsertCoveredEntityRequest(
        request_id=_entity_request_id(batch, entity.entity_id), entity=entity_to_pb(entity)
    )


def _import(args: argparse.Namespace) -> int:
    from gateway.client_commands import EXIT_OK, EXIT_USAGE, call, message_dict, usage_error

    try:
        entities = parse_entities(json.loads(Path(args.file).read_text(encoding="utf-8")))
    # ValueError: not JSON, or not UTF-8 text at all.
    except (OSError, ValueError, InvalidRequest) as exc:
        print(f"carbonlink entity import: {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Every entity is checked before any is sent: a file is imported whole or not at all.
    bad = []
    for i, entity in enumerate(entities):
        try:
            validate_entity(entity)
        except InvalidRequest as exc:
            bad.append(f"entities[{i}] ({entity.entity_id or 'no id'}): {exc}")
    if bad:
        return usage_error("entity import", f"{args.file}: nothing imported: " + "; ".join(bad))
    batch = args.request_id or uuid.uuid4().hex

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        recorded: list[gateway_pb2.CoveredEntity] = []
        try:
            for entity in entities:
                reply = stub.UpsertCoveredEntity(
                    _upsert_request(batch, entity), timeout=args.timeout
                )
                recorded.append(reply)
                if not args.json:
                    print(
                        f"entities/{reply.entity_id}: {reply.sector}, "
                        f"{len(reply.accounts)} accounts, {len(reply.years)} years"
                    )
        finally:
            if args.json:
                # One document for the file, the entities recorded (before a refusal, if
                # one stopped the import), so that a script parses the whole output.
                recorded_json = [message_dict(r) for r in recorded]
                print(json.dumps({"entities": recorded_json}, indent=2, sort_keys=True))
        return EXIT_OK

    return call(args, invoke)


def _year_ref(text: str) -> tuple[str, int]:
    """``JURISDICTION:YEAR``, an argparse type (``national:2025``)."""
    jurisdiction, sep, year = text.partition(":")
    if not sep or not jurisdiction:
        raise argparse.ArgumentTypeError(f"{text!r} is not JURISDICTION:YEAR")
    return jurisdiction, int32(year)


def _withdraw(args: argparse.Namespace) -> int:
    from adapters._pb.carbonlink.v1 import gateway_pb2
    from gateway.client_commands import EXIT_OK, call, print_message

    request = gateway_pb2.UpsertCoveredEntityRequest(
        # A new one unless given: a year withdrawn, recorded again and withdrawn again is
        # a new withdrawal, which a derived id would answer with the first.
        request_id=args.request_id or uuid.uuid4().hex,
        entity=gateway_pb2.CoveredEntity(entity_id=args.entity_id),
        withdraw_years=[
            gateway_pb2.ComplianceYearRef(jurisdiction=j, compliance_year=y) for j, y in args.year
        ],
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        reply = stub.UpsertCoveredEntity(request, timeout=args.timeout)
        lines = [f"entities/{reply.entity_id}: {len(reply.years)} years recorded"]
        for jurisdiction, year in args.year:
            # The newest withdrawal of the year: this one (a year may have been withdrawn,
            # recorded again and withdrawn again).
            done = [
                w
                for w in reply.withdrawn_years
                if (w.year.jurisdiction, w.year.compliance_year) == (jurisdiction, year)
            ][-1:]
            for w in done:
                at = w.withdrawn_at.ToDatetime().isoformat(timespec="seconds")
                by = w.withdrawn_by or "the local caller"
                lines.append(
                    f"  withdrew {jurisdiction} {year} ({w.year.verified_emissions} verified, "
                    f"{w.year.allowances_due} due) at {at}Z by {by}"
                )
        print_message(reply, args, "\n".join(lines))
        return EXIT_OK

    return call(args, invoke, request.request_id)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate plan|execute|get|abandon`` and ``entity import|withdraw`` to the CLI."""
    migrate = subparsers.add_parser(
        "migrate", help="move a covered entity from a pilot ETS to the national ETS"
    )
    commands = migrate.add_subparsers(dest="migrate_command", required=True)
    for name, handler, text in (
        ("plan", _plan, "dry run: obligation, dispositions, blocking violations"),
        (
            "execute",
            _execute,
            "carry the migration out (the same command again resumes it, or retries a "
            "failed step once its cause is settled)",
        ),
    ):
        sub = commands.add_parser(name, help=text)
        _common(sub)
        sub.add_argument("--entity", required=True, help="covered entity id")
        sub.add_argument(
            "--from", dest="source", default="shenzhen", help="pilot ETS (default shenzhen)"
        )
        sub.add_argument(
            "--to",
            dest="destination",
            default="national",
            choices=["national"],
            help="the scheme the entity moves to (national, the default and only one)",
        )
        sub.add_argument(
            "--from-year",
            dest="from_year",
            type=int32,
            required=True,
            help="first compliance year covered by the national ETS",
        )
        sub.add_argument(
            "--acknowledge",
            action="append",
            default=[],
            metavar="CODE",
            help="a warning of the plan accepted, e.g. CL-MIGRATION-0014 (repeatable)",
        )
        sub.add_argument(
            "--destination-account",
            type=account_ref,
            metavar="REGISTRY:ACCOUNT",
            help="the account the units are to land in, as a plan showed it (signed with "
            "execute): should the entity's record name another by then, the migration is "
            "blocked (CL-MIGRATION-0020) and nothing is done",
        )
        if name == "execute":
            sub.add_argument(
                "--request-id",
                type=request_id_flag,
                help="idempotency key (default: derived from the migration)",
            )
        sub.set_defaults(handler=handler)
    get = commands.add_parser("get", help="show one migration and its steps")
    _common(get)
    get.add_argument("name", help="migrations/ID or ID")
    get.set_defaults(handler=_get)
    abandon = commands.add_parser(
        "abandon",
        help="give a failed migration up for good (signed; the entity or a regulator)",
        description="Give a FAILED migration up for good: what its steps did stays done "
        "(cancelled units stay cancelled, moved units stay moved), the steps not taken are "
        "marked not_taken, and it ends abandoned with who, when and why; the entity may then "
        "plan and execute a new migration from what it holds. Any other migration is "
        "refused, naming its state.",
    )
    _common(abandon)
    abandon.add_argument("name", help="migrations/ID or ID")
    abandon.add_argument("--reason", required=True, help="why it is given up (recorded)")
    abandon.add_argument(
        "--request-id",
        type=request_id_flag,
        help="idempotency key (default: derived from the migration)",
    )
    abandon.set_defaults(handler=_abandon)

    entity = subparsers.add_parser("entity", help="covered entities")
    entity_commands = entity.add_subparsers(dest="entity_command", required=True)
    load = entity_commands.add_parser(
        "import",
        help="record covered entities from a JSON export (UpsertCoveredEntity)",
        description="Record each covered entity of FILE (regulators and registries): "
        '{"entities": [{"entity_id": "steel", "display_name": "Steel Works", "sector": '
        '"steel", "gases": ["CO2"], "accounts": {"shenzhen": "sz-steel", "national": '
        '"cn-steel"}, "years": [{"jurisdiction": "shenzhen", "compliance_year": 2023, '
        '"verified_emissions": 50000, "allowances_due": 50000}]}]}. Every entity is checked '
        "before any is sent: a file with a bad one imports nothing. An entity recorded "
        "again is replaced.",
    )
    _common(load)
    load.add_argument("file", help="the JSON export (see above)")
    load.add_argument(
        "--request-id", type=request_id_flag, help="idempotency key prefix (default: a new one)"
    )
    load.set_defaults(handler=_import)
    withdraw = entity_commands.add_parser(
        "withdraw",
        help="withdraw recorded compliance years of a covered entity (UpsertCoveredEntity)",
        description="Withdraw compliance years recorded for ENTITY_ID in error, or that a "
        "scheme no longer holds (regulators, and a registry its own jurisdiction's), the "
        "rest of its record left as it is. A year the entity surrendered for stays "
        "recorded (FAILED_PRECONDITION, naming the surrenders); a year not recorded is "
        "NOT_FOUND; nothing is withdrawn unless every year named is. Each withdrawal stays "
        "on the entity's record with the figures the year had, who and when.",
    )
    _common(withdraw)
    withdraw.add_argument("entity_id", help="covered entity id")
    withdraw.add_argument(
        "--year",
        type=_year_ref,
        action="append",
        required=True,
        metavar="JURISDICTION:YEAR",
        help="a recorded year to withdraw, e.g. national:2025 (repeatable)",
    )
    withdraw.add_argument(
        "--request-id",
        type=request_id_flag,
        help="idempotency key (default: a new one; give the same to repeat a withdrawal "
        "whose answer was lost)",
    )
    withdraw.set_defaults(handler=_withdraw)
