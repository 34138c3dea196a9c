"""The one place that knows where each guard file lives, relative to a checkout's root."""

from __future__ import annotations

from pathlib import Path

STATE_DIR = Path(".oracle")  # ignored by git: everything the gates write at run time
ATTESTATIONS_DIR = STATE_DIR / "attestations"
AUDIT_LOG = STATE_DIR / "audit.jsonl"
AUDIT_HEAD = STATE_DIR / "audit.head"
SUBMISSIONS_DIR = STATE_DIR / "submissions"  # submission records (`oracle submit`)
RUNS_DIR = Path("runs")  # training runs; each checkpoint folder holds a provenance.json
POLICIES_DIR = Path("policies")
SETTINGS_FILE = POLICIES_DIR / "policies.toml"
WAIVERS_FILE = POLICIES_DIR / "waivers.toml"
PUBLIC_KEYS_DIR = POLICIES_DIR / "keys"
LOCK_FILE = Path("requirements.lock")
MODEL_CONFIG = Path("oracle") / "moe850b" / "configs" / "oracle850b.moe.json"
SIGNING_KEY_ENV = "ORACLE_SIGNING_KEY"  # path to the Ed25519 private key (PEM); never inside the tree


def attestation_path(root: Path, tree_id: str) -> Path:
    return root / ATTESTATIONS_DIR / f"{tree_id}.json"
