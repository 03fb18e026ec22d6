"""The names the ``rules`` help lists, spelt out so that parsing the command line loads no
rules engine (``compliance_rules`` loads its schemas and jsonschema on import).

A test pins each to what the engine knows: ``compliance_rules.BUILTIN_PACKS`` and the
values of ``compliance_rules.Use``.
"""

from __future__ import annotations

BUILTIN_PACKS: tuple[str, ...] = (
    "shenzhen",
    "national",
    "guangdong",
    "hkmo",
    "corsia",
    "article6-bri",
)
"""The scheme packs shipped with the rules engine, in its order."""

USES: tuple[str, ...] = ("compliance", "voluntary_retirement", "listing", "corsia")
"""The uses a transfer's facts are decided for, in the engine's order."""
