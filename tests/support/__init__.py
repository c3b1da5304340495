"""What tests share: real servers started on free ports, the fault proxy, hub and agent
helpers and data helpers."""
