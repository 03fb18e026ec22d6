"""``carbonlink demo``'s last journey: the operator reads the gateway's metrics.

After the other journeys, the operator's scraper fetches ``/metrics`` over mutual TLS (a
client certificate of the demo's CA), and the demo prints what an operator watches: the
calls answered by code, the registry calls by outcome, the transfer states committed,
and the work still unfinished, which must be none once every journey has ended.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway import demo_security

_UNFINISHED = (
    "carbonlink_transfers_unfinished",
    "carbonlink_uses_pending",
    "carbonlink_migrations_running",
)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _scrape(workdir: Path, port: int) -> list[tuple[str, dict[str, str], float]]:
    tls = demo_security.layout(workdir)
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    context.load_cert_chain(str(tls.client_cert("auditor")), str(tls.client_key("auditor")))
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    with opener.open(f"https://localhost:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode("utf-8")
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def journey_operator(workdir: Path, metrics_port: int, failure: type[Exception]) -> None:
    """Print the gateway's metrics as an operator reads them.

    Raises:
        failure: The metrics could not be read, or something is still under way after
            every journey ended.
    """
    _say()
    _say("== operator: the gateway's metrics (Prometheus, over mutual TLS)")
    try:
        samples = _scrape(workdir, metrics_port)
    except OSError as exc:  # urllib's URLError, a TLS refusal, a reset connection
        raise failure(f"the metrics endpoint did not answer: {exc}") from exc
    calls: Counter[str] = Counter()
    registry_calls: Counter[str] = Counter()
    steps: dict[str, float] = {}
    unfinished = 0.0
    log_size = 0.0
    for name, labels, value in samples:
        if name == "carbonlink_rpc_calls_total":
            calls[labels["code"]] += int(value)
        elif name == "carbonlink_registry_calls_total":
            registry_calls[labels["outcome"]] += int(value)
        elif name == "carbonlink_transfer_steps_total":
            steps[labels["state"]] = value
        elif name in _UNFINISHED:
            unfinished += value
        elif name == "carbonlink_provenance_log_size":
            log_size = value
    _say(f"   calls answered: {', '.join(f'{c} {n}' for c, n in sorted(calls.items()))}")
    _say("   registry calls: " + ", ".join(f"{o} {n}" for o, n in sorted(registry_calls.items())))
    _say(
        f"   transfers completed {int(steps.get('COMPLETED', 0))}, "
        f"rolled back {int(steps.get('ROLLED_BACK', 0))}, "
        f"rejected {int(steps.get('REJECTED', 0))}; provenance log {int(log_size)} events"
    )
    if unfinished:
        raise failure(f"{int(unfinished)} transfers, uses or migrations still under way")
    _say("   nothing unfinished: every transfer, retirement and migration has ended")
