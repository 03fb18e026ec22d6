"""Loading rule packs: the only module of the package that reads files.

A pack is YAML (or JSON) checked in three passes, every pass reporting every problem with its
JSON path rather than stopping at the first:

1. the pack document against ``schemas/pack.schema.json``
   (``Draft202012Validator.check_schema`` first, then ``iter_errors``);
2. semantics the schema cannot say: dates, ascending versions, unique rule ids, references
   to named parameters, an ``accepted_programs`` rule (or a ``use_refused`` rule, which
   refuses every unit) for every use of a version, compliance cycles in order, apart, and
   decided (on their ``rules_on`` day, by default their surrender deadline) under a version
   in force no later than their deadline;
3. each rule's resolved ``params`` against the schema's ``$defs/params/<kind>``.

A version's GWP basis names an IPCC report; its values come from the package's GWP data
(``data/gwp100.yaml``, checked against ``schemas/gwp.schema.json`` the same way), so every
pack and every block's ``gwp_basis`` are read against one sourced set of tables.

YAML timestamps are kept as strings (the schema checks their form and the loader parses them),
and YAML/JSON reals are read as ``Decimal`` so that no figure of a pack is ever a float.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from compliance_rules.errors import DocumentError, Issue, PackInvalidError, PackNotFoundError
from compliance_rules.facts import Use
from compliance_rules.gwp import GwpCatalog, GwpReport
from compliance_rules.pack import (
    ComplianceCycle,
    Confidence,
    Disposition,
    GwpBasis,
    MigrationRules,
    PackVersion,
    Parameter,
    RulePack,
    RuleSpec,
    Source,
)

BUILTIN_PACKS: tuple[str, ...] = (
    "shenzhen",
    "national",
    "guangdong",
    "hkmo",
    "corsia",
    "article6-bri",
)
"""The scheme packs shipped with the package (the baseline pack is applied under each)."""

BASELINE_PACK = "baseline"


class _Loader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps and with exact decimals."""


# NOTE(compliance_rules): dropping the timestamp resolver keeps dates as strings so the schema
# can check them and the loader can report a bad date with its path instead of PyYAML's error.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    value = loader.construct_scalar(node)  # type: ignore[arg-type]
    # NOTE(compliance_rules): node is a ScalarNode for the float tag; the stub types it wider.
    return Decimal(str(value).replace("_", ""))


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def parse_document(text: str, *, json_only: bool = False) -> Any:
    """Parse YAML or JSON text into plain data with ``Decimal`` reals and string dates.

    Args:
        text: The document.
        json_only: Parse as strict JSON (reals still become ``Decimal``).

    Returns:
        The parsed document.

    Raises:
        DocumentError: The text is not well-formed YAML/JSON.
    """
    try:
        if json_only:
            return json.loads(text, parse_float=Decimal)
        return yaml.load(text, Loader=_Loader)
    except json.JSONDecodeError as exc:
        raise DocumentError(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    except yaml.YAMLError as exc:
        raise DocumentError(f"not valid YAML: {exc}") from exc


def read_document(path: Path) -> Any:
    """Read and parse a YAML or JSON file (JSON when the suffix is ``.json``).

    Args:
        path: The file.

    Returns:
        The parsed document.

    Raises:
        DocumentError: The file cannot be read or is not well-formed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DocumentError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise DocumentError(f"cannot read {path}: not UTF-8 text ({exc.reason})") from exc
    return parse_document(text, json_only=path.suffix == ".json")


def json_path(parts: Iterable[object]) -> str:
    """Render a jsonschema ``absolute_path`` as ``$.a[0].b``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(part)):
            out += f".{part}"
        else:
            out += f"[{json.dumps(str(part))}]"
    return out


@functools.cache
def pack_schema() -> Mapping[str, Any]:
    """The JSON Schema of rule packs, itself checked against the 2020-12 metaschema.

    Raises:
        PackInvalidError: The shipped schema is not a valid JSON Schema.
    """
    text = resources.files("compliance_rules.schemas").joinpath("pack.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = json_path(exc.absolute_path)
        raise PackInvalidError("pack.schema.json", [Issue(path, exc.message)]) from exc
    return MappingProxyType(schema)


def _validator() -> Draft202012Validator:
    return Draft202012Validator(dict(pack_schema()))


def _short(message: str, limit: int = 300) -> str:
    # jsonschema quotes the whole offending instance; a whole rule list helps nobody.
    return message if len(message) <= limit else message[:limit] + " ..."


def schema_issues(document: Any, *, prefix: Sequence[object] = ()) -> list[Issue]:
    """Every schema error of ``document``, sorted by path."""
    errors = _validator().iter_errors(document)
    issues = [Issue(json_path([*prefix, *e.absolute_path]), _short(e.message)) for e in errors]
    return sorted(issues, key=lambda i: (i.path, i.message))


def _params_issues(kind: str, params: Mapping[str, Any], prefix: Sequence[object]) -> list[Issue]:
    validator = _validator()
    sub = validator.evolve(schema={"$ref": f"#/$defs/params/{kind}"})
    return [
        Issue(json_path([*prefix, *e.absolute_path]), _short(e.message))
        for e in sub.iter_errors(params)
    ]


def _parse_date(value: Any, path: str, issues: list[Issue]) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        issues.append(Issue(path, f"{value!r} is not a valid calendar date"))
        return None


def _source(doc: Mapping[str, Any]) -> Source:
    return Source(
        document=doc["document"],
        clause=doc["clause"],
        confidence=Confidence(doc["confidence"]),
        url=doc.get("url", ""),
    )


def _resolve(
    value: Any,
    parameters: Mapping[str, Parameter],
    path: str,
    issues: list[Issue],
    used: set[str],
) -> Any:
    """Replace ``{"param": name}`` by the named parameter's value, recursively."""
    if isinstance(value, dict):
        if set(value) == {"param"} and isinstance(value["param"], str):
            name = value["param"]
            parameter = parameters.get(name)
            if parameter is None:
                issues.append(Issue(path, f"refers to undefined parameter {name!r}"))
                return None
            if parameter.value is None:
                # An unknown figure cannot drive a rule: the rule would be a guess.
                issues.append(
                    Issue(path, f"refers to parameter {name!r} whose value is unknown (null)")
                )
                return None
            used.add(name)
            return parameter.value
        return {k: _resolve(v, parameters, f"{path}.{k}", issues, used) for k, v in value.items()}
    if isinstance(value, list):
        out: list[Any] = []
        for i, item in enumerate(value):
            resolved = _resolve(item, parameters, f"{path}[{i}]", issues, used)
            # A reference to a list parameter inside a list splices it in, so a pack can
            # write a literal list plus a named (possibly unconfirmed) extension of it.
            if isinstance(item, dict) and set(item) == {"param"} and isinstance(resolved, list):
                out.extend(resolved)
            else:
                out.append(resolved)
        return out
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _build_version(
    doc: Mapping[str, Any], index: int, pack_doc: Mapping[str, Any], issues: list[Issue]
) -> PackVersion | None:
    base = f"$.versions[{index}]"
    effective = _parse_date(doc["effective_from"], f"{base}.effective_from", issues)
    uses = frozenset(Use(u) for u in doc["uses"])
    parameters = {
        name: Parameter(
            name=name,
            value=p["value"],
            confidence=Confidence(p["confidence"]),
            note=p["note"],
            source=_source(p["source"]) if "source" in p else None,
        )
        for name, p in doc.get("parameters", {}).items()
    }
    gwp = _build_gwp(doc["gwp"], f"{base}.gwp", issues)
    prefix = pack_doc["rule_id_prefix"]
    seen: set[str] = set()
    rules: list[RuleSpec] = []
    for j, rule in enumerate(doc["rules"]):
        path = f"{base}.rules[{j}]"
        rule_id = rule["id"]
        if not rule_id.startswith(prefix):
            issues.append(Issue(f"{path}.id", f"{rule_id!r} does not start with {prefix!r}"))
        if rule_id in seen:
            issues.append(Issue(f"{path}.id", f"duplicate rule id {rule_id!r} in this version"))
        seen.add(rule_id)
        rule_uses = frozenset(Use(u) for u in rule["uses"])
        for extra in sorted(rule_uses - uses):
            issues.append(Issue(f"{path}.uses", f"{extra!r} is not a use of this version"))
        used: set[str] = set()
        params = _resolve(rule["params"], parameters, f"{path}.params", issues, used)
        issues.extend(
            _params_issues(rule["kind"], params, ["versions", index, "rules", j, "params"])
        )
        unconfirmed = tuple(
            sorted(n for n in used if parameters[n].confidence is Confidence.UNCONFIRMED)
        )
        rules.append(
            RuleSpec(
                rule_id=rule_id,
                kind=rule["kind"],
                message=rule["message"],
                source=_source(rule["source"]),
                uses=rule_uses,
                params=_freeze(params),
                unconfirmed_params=unconfirmed,
            )
        )
    if pack_doc["role"] == "scheme":
        _check_uses_decided(rules, uses, base, issues)
    migration = (
        _build_migration(doc["migration"], parameters, index, issues)
        if "migration" in doc
        else None
    )
    if effective is None or gwp is None:
        return None
    return PackVersion(
        effective_from=effective,
        description=doc["description"],
        uses=uses,
        parameters=MappingProxyType(parameters),
        gwp=gwp,
        rules=tuple(rules),
        migration=migration,
    )


def _check_uses_decided(
    rules: Sequence[RuleSpec], uses: frozenset[Use], base: str, issues: list[Issue]
) -> None:
    """Every use of a scheme version must say which units it accepts, or that it refuses all.

    An ``accepted_programs`` rule names the programs accepted; a ``use_refused`` rule says
    the version holds no eligibility list for the use, so every unit is refused. A use with
    neither would be decided by whatever other rules happen to apply; a use with both would
    accept programs the refusal makes moot, which is a contradiction in the pack.
    """
    accepted = {u for r in rules if r.kind == "accepted_programs" for u in r.uses}
    refused = {u for r in rules if r.kind == "use_refused" for u in r.uses}
    for missing in sorted(uses - accepted - refused):
        issues.append(
            Issue(
                f"{base}.rules",
                f"no accepted_programs or use_refused rule for use {missing.value!r}",
            )
        )
    for both in sorted(accepted & refused):
        issues.append(
            Issue(
                f"{base}.rules",
                f"use {both.value!r} has both an accepted_programs and a use_refused rule: "
                "a refused use accepts no program",
            )
        )


def _build_gwp(doc: Mapping[str, Any], path: str, issues: list[Issue]) -> GwpBasis | None:
    """A version's GWP basis, its values taken from the package's GWP data."""
    catalog = load_gwp_catalog()
    found = catalog.find(doc["report"])
    if found is None:
        issues.append(
            Issue(
                f"{path}.report",
                f"{doc['report']!r} is not a report of the GWP data "
                f"(known: {', '.join(catalog.known)})",
            )
        )
    if doc["horizon_years"] != catalog.horizon_years:
        issues.append(
            Issue(
                f"{path}.horizon_years",
                f"the GWP data holds {catalog.horizon_years}-year values only",
            )
        )
    if found is None or doc["horizon_years"] != catalog.horizon_years:
        return None
    return GwpBasis(
        report=doc["report"],
        horizon_years=doc["horizon_years"],
        confidence=Confidence(doc["confidence"]),
        note=doc["note"],
        values=found,
        catalog=catalog,
    )


def _build_migration(
    doc: Mapping[str, Any], parameters: Mapping[str, Parameter], index: int, issues: list[Issue]
) -> MigrationRules | None:
    """A version's migration section, parameters resolved and checked like a rule's params."""
    base = f"$.versions[{index}].migration"
    names: dict[str, str] = {}
    unconfirmed: set[str] = set()

    def resolve(key: str, value: Any, path: str) -> Any:
        used: set[str] = set()
        resolved = _resolve(value, parameters, path, issues, used)
        for name in used:
            names[key] = name
            if parameters[name].confidence is Confidence.UNCONFIRMED:
                unconfirmed.add(key)
        return resolved

    sectors = resolve("sectors", doc["sectors"], f"{base}.sectors")
    dispositions = {
        program: resolve(program, value, f"{base}.dispositions.{program}")
        for program, value in doc["dispositions"].items()
    }
    resolved = {
        "destination": doc["destination"],
        "source": doc["source"],
        "sectors": sectors,
        "dispositions": dispositions,
    }
    sub = _validator().evolve(schema={"$ref": "#/$defs/migration_resolved"})
    found = [
        Issue(json_path(["versions", index, "migration", *e.absolute_path]), _short(e.message))
        for e in sub.iter_errors(resolved)
    ]
    issues.extend(found)
    if found or not isinstance(sectors, dict):
        return None
    return MigrationRules(
        destination=doc["destination"],
        source=_source(doc["source"]),
        dispositions=MappingProxyType({p: Disposition(d) for p, d in dispositions.items()}),
        sectors=MappingProxyType(dict(sectors)),
        parameters=MappingProxyType(names),
        unconfirmed=frozenset(unconfirmed),
    )


def build_pack(document: Any, *, origin: str) -> RulePack:
    """Validate a parsed pack document and build the typed pack.

    Args:
        document: The parsed YAML/JSON document.
        origin: Name used in error messages.

    Returns:
        The pack.

    Raises:
        PackInvalidError: With every schema and semantic issue found.
    """
    issues = schema_issues(document)
    if issues:
        raise PackInvalidError(origin, issues)
    versions: list[PackVersion] = []
    for i, vdoc in enumerate(document["versions"]):
        version = _build_version(vdoc, i, document, issues)
        if version is not None:
            versions.append(version)
    for i in range(1, len(versions)):
        if versions[i].effective_from <= versions[i - 1].effective_from:
            issues.append(
                Issue(
                    f"$.versions[{i}].effective_from",
                    "versions must be in strictly ascending effective_from order",
                )
            )
    cycles = _build_cycles(document.get("compliance_cycles", []), versions, issues)
    if issues:
        raise PackInvalidError(origin, issues)
    return RulePack(
        name=document["pack"],
        title=document["title"],
        rule_id_prefix=document["rule_id_prefix"],
        baseline=document["role"] == "baseline",
        versions=tuple(versions),
        origin=origin,
        cycles=cycles,
    )


def _build_cycles(
    docs: Sequence[Mapping[str, Any]], versions: Sequence[PackVersion], issues: list[Issue]
) -> tuple[ComplianceCycle, ...]:
    """The pack's compliance cycles, each checked against the others and the versions."""
    cycles: list[ComplianceCycle] = []
    indices: list[int] = []
    for i, doc in enumerate(docs):
        path = f"$.compliance_cycles[{i}]"
        first, last = doc["first_year"], doc["last_year"]
        deadline = _parse_date(doc["surrender_deadline"], f"{path}.surrender_deadline", issues)
        if first > last:
            issues.append(Issue(f"{path}.last_year", f"{last} is before first_year {first}"))
        for j, other in zip(indices, cycles, strict=True):
            if other.name == doc["name"]:
                issues.append(Issue(f"{path}.name", f"cycle {doc['name']!r} is declared twice"))
            if other.first_year <= last and first <= other.last_year:
                issues.append(
                    Issue(
                        path,
                        f"years {first}-{last} overlap those of compliance_cycles[{j}] "
                        f"({other.first_year}-{other.last_year}): a year has one cycle",
                    )
                )
        named = "rules_on" in doc
        rules_on = _parse_date(doc["rules_on"], f"{path}.rules_on", issues) if named else deadline
        if deadline is None or rules_on is None:
            continue
        if deadline <= date(last, 12, 31):
            issues.append(
                Issue(
                    f"{path}.surrender_deadline",
                    f"{deadline} is not after the cycle's last year ({last}): a cycle is "
                    "surrendered after its years",
                )
            )
        if rules_on > deadline:
            issues.append(
                Issue(
                    f"{path}.rules_on",
                    f"{rules_on} is after the surrender deadline {deadline}: a cycle cannot be "
                    "decided under rules that came after it closed",
                )
            )
        if versions and rules_on < versions[0].effective_from:
            issues.append(
                Issue(
                    f"{path}.{'rules_on' if named else 'surrender_deadline'}",
                    f"no version is in force on {rules_on} (first version: "
                    f"{versions[0].effective_from}), so the cycle's years could not be decided",
                )
            )
        indices.append(i)
        cycles.append(
            ComplianceCycle(
                name=doc["name"],
                first_year=first,
                last_year=last,
                surrender_deadline=deadline,
                rules_on=rules_on,
                closes_at_deadline=doc["closes_at_deadline"],
                confidence=Confidence(doc["confidence"]),
                note=doc["note"],
                source=_source(doc["source"]),
            )
        )
    return tuple(cycles)


def load_pack_text(text: str, *, origin: str, json_only: bool = False) -> RulePack:
    """Parse and validate a pack from text.

    Args:
        text: YAML or JSON.
        origin: Name used in error messages.
        json_only: Parse as strict JSON.

    Returns:
        The pack.

    Raises:
        PackInvalidError: Malformed text, or every issue found when validating.
    """
    try:
        document = parse_document(text, json_only=json_only)
    except DocumentError as exc:
        raise PackInvalidError(origin, [Issue("$", str(exc))]) from exc
    return build_pack(document, origin=origin)


def load_pack_file(path: Path) -> RulePack:
    """Load a pack file (``.yaml``, ``.yml`` or ``.json``).

    Args:
        path: The file.

    Returns:
        The pack.

    Raises:
        PackNotFoundError: The file does not exist or cannot be read.
        PackInvalidError: Every issue found when validating.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PackNotFoundError(f"cannot read rule pack {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PackNotFoundError(
            f"cannot read rule pack {path}: not UTF-8 text ({exc.reason})"
        ) from exc
    return load_pack_text(text, origin=str(path), json_only=path.suffix == ".json")


GWP_DATA = "gwp100.yaml"
"""The IPCC GWP tables shipped in ``compliance_rules/data``."""


def build_gwp_catalog(document: Any, *, origin: str) -> GwpCatalog:
    """Validate a parsed GWP data document and build the typed catalog.

    Args:
        document: The parsed YAML/JSON document.
        origin: Name used in error messages.

    Returns:
        The catalog.

    Raises:
        PackInvalidError: With every schema issue found, each with its JSON path.
    """
    text = resources.files("compliance_rules.schemas").joinpath("gwp.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    errors = Draft202012Validator(schema).iter_errors(document)
    issues = sorted(
        (Issue(json_path(e.absolute_path), _short(e.message)) for e in errors),
        key=lambda i: (i.path, i.message),
    )
    if issues:
        raise PackInvalidError(origin, issues)
    reports = {
        report: GwpReport(
            report=report,
            title=r["title"],
            aliases=tuple(r["aliases"]),
            source=_source(r["source"]),
            table=MappingProxyType({gas: Decimal(v) for gas, v in r["table"].items()}),
        )
        for report, r in document["reports"].items()
    }
    return GwpCatalog(document["horizon_years"], MappingProxyType(reports))


@functools.cache
def load_gwp_catalog() -> GwpCatalog:
    """The GWP tables shipped with the package (cached; they are immutable).

    Raises:
        PackInvalidError: The shipped data is invalid (a packaging bug).
    """
    text = resources.files("compliance_rules.data").joinpath(GWP_DATA).read_text("utf-8")
    try:
        document = parse_document(text)
    except DocumentError as exc:
        raise PackInvalidError(GWP_DATA, [Issue("$", str(exc))]) from exc
    return build_gwp_catalog(document, origin=GWP_DATA)


@functools.cache
def load_builtin(name: str) -> RulePack:
    """Load a pack shipped with the package, by name (cached; packs are immutable).

    Args:
        name: One of :data:`BUILTIN_PACKS`, or ``"baseline"``.

    Returns:
        The pack.

    Raises:
        PackNotFoundError: No such built-in pack.
        PackInvalidError: The shipped pack is invalid (a packaging bug).
    """
    if name not in (*BUILTIN_PACKS, BASELINE_PACK):
        known = ", ".join((*BUILTIN_PACKS, BASELINE_PACK))
        raise PackNotFoundError(f"no built-in rule pack {name!r} (known: {known})")
    text = resources.files("compliance_rules.packs").joinpath(f"{name}.yaml").read_text("utf-8")
    return load_pack_text(text, origin=f"{name}.yaml")


def load_pack(name_or_path: str) -> RulePack:
    """Load a built-in pack by name, or a pack file by path.

    Args:
        name_or_path: A built-in name (``"shenzhen"``) or a path to a YAML/JSON file.

    Returns:
        The pack.

    Raises:
        PackNotFoundError: Neither a built-in name nor a readable file.
        PackInvalidError: Every issue found when validating.
    """
    if name_or_path in (*BUILTIN_PACKS, BASELINE_PACK):
        return load_builtin(name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise PackNotFoundError(
            f"{name_or_path!r} is neither a built-in rule pack "
            f"({', '.join(BUILTIN_PACKS)}) nor an existing file"
        )
    return load_pack_file(path)
