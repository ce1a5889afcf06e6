"""In-memory fakes of the engine's ports (shared/sync/ports.py, shared/crm/port.py), faithful to the
contracts the real adapters keep: ETags that change on every write, 412 / ETag conflicts, not-found,
and only the explicitly set fields of a write being written. The engine runs against them in
milliseconds; the e2e suite proves the real adapters keep the same contracts."""
