"""Security tests: each attack of the trust-root issue reproduced and shown refused, plus the legitimate chain."""
