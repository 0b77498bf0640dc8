"""What the tests (and `bench/`) share: the CLINC150 queries, a fake MeteringService, polling
helpers and Prometheus sample reading. Ports and readiness waits are `devstack.probes`."""
