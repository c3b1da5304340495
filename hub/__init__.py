"""The hub: ingest, object stores, catalog, restore coordinator, admin API."""
