"""The hub: ingest, stores, catalog, replication, restore coordinator, admin API."""
