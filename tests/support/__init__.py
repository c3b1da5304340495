"""What tests (and benches) share. Plain modules, no pytest imports, except fixtures.py:

- servers.py: nats-server and SeaweedFS's S3 gateway on free ports;
- faultproxy.py: the asyncio TCP fault proxy, and ThreadedProxy for synchronous tests;
- procs.py: CLI results, children started and stopped by pid, polling;
- data.py: random trees, SQLite databases, agent memory and models, tree comparisons;
- node.py: the agent (``Agent``: init, enrol, configure, run, in-process or as a process);
- hub.py: the hub in a box (``HubProcess``: ``amber-hub serve`` as a real process);
- security.py, site.py, fleet.py: the security tests' tools, the air-gapped site of the
  bundle tests, the fleet of agent daemons of the staged-restore tests;
- fixtures.py: the pytest fixtures, registered from tests/conftest.py.
"""
