"""Serving: an OpenAI-compatible HTTP API (app) over a continuous-batching engine (engine) for checkpoints whose
signed provenance verifies (loading); `oracle serve` runs it under uvicorn (server)."""

# The variable holding the key the API routes require (an environment variable, not an option: argv is visible to
# every local user; a Kubernetes Secret arrives this way).
API_KEY_ENV = "ORACLE_SERVE_API_KEY"
