"""Security tests: each attack of the trust-root issue reproduced exactly and shown refused, plus the legitimate chain."""
