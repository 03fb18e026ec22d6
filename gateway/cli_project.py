"""``carbonlink project list|get``: a foreign issuer asks to list a project in a
jurisdiction, and reads a listing back.

Parsing loads neither gRPC, the generated messages nor YAML: each handler imports them when
it runs.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli_client import _common, request_id_flag

if TYPE_CHECKING:
    from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2

_JURISDICTIONS = ("shenzhen", "guangdong", "national", "hkmo", "bri")
"""Where the server lists projects: every jurisdiction with a rule pack (the gate's
``PACK_BY_REGISTRY``, which a test pins this to). Spelt out here rather than imported, so
that the CLI does not load the rules engine to parse its arguments."""


def read_project(path: Path) -> model_pb2.Project:
    """The project described in ``path`` (YAML or JSON, the fields of ``Project``): what
    ``project list`` sends, and what ``rules evaluate --listing`` decides offline.

    Raises:
        ValueError: The file is unreadable, not a mapping, or names an unknown field or a
            value of the wrong type (the message says which).
    """
    import yaml
    from google.protobuf import json_format

    from adapters._pb.carbonlink.v1 import model_pb2

    try:
        document: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    # ValueError: not UTF-8 text, or an unquoted date YAML cannot make (2024-13-01).
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: a project is a mapping of Project's fields")
    # YAML reads an unquoted date as a date: the API takes ISO 8601 text.
    document = json.loads(json.dumps(document, default=str))
    project = model_pb2.Project()
    try:
        json_format.ParseDict(document, project)
    except json_format.ParseError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return project


def _summary(
    reply: gateway_pb2.ListProjectResponse | gateway_pb2.Listing, about: Sequence[str] = ()
) -> str:
    lines = [f"{reply.name}: {'listed' if reply.listed else 'REFUSED'}", *about]
    if not reply.binding:
        lines.append(
            "  not binding: decided by the rules of another day than the gateway's today, "
            "so it is not the project's standing and records no facts"
        )
    for refusal in reply.refusals:
        lines.append(f"  refused {refusal.rule_id}: {refusal.message}")
    for use in reply.eligibility:
        if not use.decision.allowed:
            verdict = "not eligible"
        elif use.conditions:
            # Never a bare "eligible": authorization, corresponding adjustment and gas are
            # facts of each unit, so a transfer can still be refused on them.
            verdict = "eligible, subject to each transfer's check of"
        else:
            verdict = "eligible"
        lines.append(f"  {use.use}: {verdict}")
        for violation in use.decision.violations:
            lines.append(f"    {violation.rule_id}: {violation.message}")
        if use.decision.allowed:
            for condition in use.conditions:
                lines.append(f"    {condition.rule_id}: {condition.message}")
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    from adapters._pb.carbonlink.v1 import gateway_pb2
    from gateway.client_commands import EXIT_OK, EXIT_REFUSED, call, print_message, usage_error

    try:
        project = read_project(Path(args.file))
    except ValueError as exc:
        return usage_error("project list", str(exc))
    request = gateway_pb2.ListProjectRequest(
        request_id=args.request_id or uuid.uuid4().hex,
        project=project,
        jurisdiction=args.jurisdiction,
        as_of=args.as_of or "",
    )

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        reply = stub.ListProject(request, timeout=args.timeout)
        print_message(reply, args, _summary(reply))
        return EXIT_OK if reply.listed else EXIT_REFUSED

    return call(args, invoke)


def _facts(project: model_pb2.Project) -> list[str]:
    """One line per fact the issuer declared, as the API's JSON spells it."""
    from google.protobuf import json_format

    declared = json_format.MessageToDict(project)
    lines = []
    for field in sorted(declared.keys() - {"program", "projectId"}):
        value = declared[field]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        lines.append(f"    {field}: {text}")
    return lines


def _about(listing: gateway_pb2.Listing) -> list[str]:
    """What a read-back adds to ListProject's answer: the facts, who asked, and when."""
    project = listing.project
    when = listing.create_time.ToDatetime().isoformat(timespec="seconds") + "Z"
    return [
        f"  {project.program} project {project.project_id} in {listing.jurisdiction} "
        f"as of {listing.as_of} (rules: {', '.join(listing.pack_versions)})",
        # An insecure gateway knows no caller: say so rather than print an empty name.
        f"  requested by {listing.requested_by or '(insecure gateway: no caller)'} at {when}",
        "  facts:",
        *_facts(project),
    ]


def _get(args: argparse.Namespace) -> int:
    from adapters._pb.carbonlink.v1 import gateway_pb2
    from gateway.client_commands import EXIT_OK, EXIT_REFUSED, call, print_message, usage_error

    prefix, sep, listing_id = args.name.rpartition("/")
    if sep and prefix != "listings":
        # The server would refuse it too; naming the shape here saves the call.
        return usage_error("project get", f"{args.name!r} is not listings/ID or ID")
    request = gateway_pb2.GetListingRequest(name=f"listings/{listing_id}")

    def invoke(stub: gateway_pb2_grpc.LinkageGatewayStub) -> int:
        listing = stub.GetListing(request, timeout=args.timeout)
        print_message(listing, args, _summary(listing, _about(listing)))
        # As `project list` exits: a script reading a listing back learns its outcome.
        return EXIT_OK if listing.listed else EXIT_REFUSED

    return call(args, invoke)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``project list`` and ``project get`` to the CLI."""
    project = subparsers.add_parser("project", help="foreign projects listed in a jurisdiction")
    commands = project.add_subparsers(dest="project_command", required=True)
    listing = commands.add_parser(
        "list",
        help="ask to list a project: refusals, and its units' eligibility per use",
        description=(
            "FILE describes the project (YAML or JSON, the fields of carbonlink.v1.Project: "
            "program, project_id, country, project_type, start_date, other_registrations, "
            "authorization, labels...). Exits 1 when the listing is refused: the "
            "project's units are then refused in that jurisdiction (transfers into it, "
            "retirements and surrenders there) until a listing there is not refused. "
            "A project no one has listed is listed (or refused) only for an issuer whose "
            "token names an account at the project's registry of origin (e.g. "
            "verra:ACCOUNT) that holds or held its units; only its lister, or a "
            "regulator, lists it again."
        ),
    )
    _common(listing)
    listing.add_argument("file", help="the project, YAML or JSON")
    listing.add_argument("--jurisdiction", required=True, choices=_JURISDICTIONS)
    listing.add_argument("--as-of", help="ISO 8601 date the decision is taken for (default today)")
    listing.add_argument(
        "--request-id", type=request_id_flag, help="idempotency key (default: a new one)"
    )
    listing.set_defaults(handler=_list, client="issuer")

    get = commands.add_parser(
        "get",
        help="read a listing back: facts, outcome per use, refusals, who asked and when",
        description=(
            "NAME is the listings/ID `project list` answered (or the bare ID). Only who "
            "asked for the listing, or a regulator, may read it. Exits 1 when the listing "
            "was refused."
        ),
    )
    _common(get)
    get.add_argument("name", help="listings/ID or ID")
    get.set_defaults(handler=_get, client="issuer")
