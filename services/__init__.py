"""The gateway's flows, between the HTTP surface and storage: customers and sessions (who may do what, the quota,
recording or abandoning), the contracts' flows and their pairing with providers, the lifecycle (ends, hand-offs,
sweeps), the turn queue, process leases and the rate limiter. Handlers parse, authorize, call one service and
answer; services raise domain errors (domain/errors.py), never HTTP ones."""
