"""``--vault`` may be left out when the hub holds exactly one vault."""

from __future__ import annotations

from collections.abc import Iterable

from amber.hub.catalog import Catalog
from amber.hub.cli.client import AdminClient
from amber.protocol.errors import UsageError


def only_vault(vaults: Iterable[str]) -> str:
    """The one vault among ``vaults``; a UsageError naming them when there are 0 or several."""
    names = sorted(set(vaults))
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError(
            "the hub holds no vault yet, so --vault cannot be left out",
            hint="name the vault with --vault NAME (enrolling a node creates it)",
        )
    raise UsageError(
        f"the hub holds {len(names)} vaults ({', '.join(names)}): which one?",
        hint="name one with --vault NAME",
    )


def vault_from_hub(given: str | None, client: AdminClient) -> str:
    """``given``, else the running hub's only vault (asked through the admin API)."""
    if given:
        return given
    return only_vault(str(row["vault"]) for row in client.call("GET", "/api/v1/nodes"))


async def vault_from_catalog(given: str | None, catalog: Catalog) -> str:
    """``given``, else the only vault in the hub's catalog (for offline commands)."""
    if given:
        return given
    return only_vault(n.vault for n in await catalog.nodes())
