"""`oracle trust init|show|verify` and `oracle keys new`: set up and inspect the trust root (guards.trust).

Exit codes: 0 success, 1 the trust root does not verify, 2 usage or configuration errors (the class of the error
carries its code, oracle_base.errors; the `oracle` command's handler prints it).
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from oracle_base.errors import UsageError

trust_app = typer.Typer(help="The trust root: which keys may sign what, and the policy floor.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Ed25519 signing keys: the private half stays outside every checkout.", no_args_is_help=True
)

DEFAULT_KEY_DIR = Path("~/.config/oracle/keys")


def _work_tree_of(path: Path) -> Path | None:
    """The git work tree that contains `path` (or its nearest existing parent), if any."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if probe.is_file():
        probe = probe.parent
    done = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=probe, capture_output=True, text=True, check=False
    )
    return Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None


def _outside_checkouts(path: Path, what: str) -> Path:
    resolved = path.expanduser().resolve()
    tree = _work_tree_of(resolved)
    if tree is not None:
        raise UsageError(
            f"{what} {resolved} would lie inside the git checkout {tree}: a change could write it; "
            "choose a path outside every checkout"
        )
    return resolved


@keys_app.command("new")
def keys_new_command(
    name: Annotated[str, typer.Argument(help="A name for the key, e.g. ci, submitter, trainer, reviewer-alice.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the private key (NAME.pem, mode 0600) goes; outside any checkout.")
    ] = DEFAULT_KEY_DIR,
    public_out: Annotated[
        Path | None, typer.Option("--public", help="Where the public key goes (default: beside the private key).")
    ] = None,
) -> None:
    """Make an Ed25519 key pair; print its key id. Give the public half to whoever issues the trust root.

    Example: oracle keys new ci --dir ~/.config/oracle/keys
    """
    from guards.keys import generate_keypair

    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"key name {name!r} must be a plain file name such as `ci` or `submitter`")
    folder = _outside_checkouts(directory, "the private key's folder")
    private = folder / f"{name}.pem"
    public = public_out.expanduser().resolve() if public_out is not None else folder / f"{name}.pub"
    keyid = generate_keypair(private, public)
    typer.echo(f"key {keyid}: private {private} (0600, never commit it), public {public}")


@trust_app.command("init")
def trust_init_command(
    out: Annotated[Path, typer.Option("--out", help="The trust root file to write; outside any checkout.")],
    root_keys: Annotated[
        list[Path], typer.Option("--root-key", help="Private key(s) that sign the trust root (repeat for several).")
    ],
    attestation: Annotated[
        list[Path] | None, typer.Option("--attestation", help="Public key allowed to sign attestations (CI).")
    ] = None,
    submission: Annotated[
        list[Path] | None, typer.Option("--submission", help="Public key allowed to sign submission records.")
    ] = None,
    provenance: Annotated[
        list[Path] | None, typer.Option("--provenance", help="Public key allowed to sign training provenance.")
    ] = None,
    waiver_approval: Annotated[
        list[Path] | None, typer.Option("--waiver-approval", help="Public key allowed to approve critical waivers.")
    ] = None,
    threshold: Annotated[int, typer.Option("--threshold", help="Root signatures needed to accept the file.")] = 1,
    version: Annotated[int | None, typer.Option("--version", help="Default: 1, or the existing file's + 1.")] = None,
    expires_days: Annotated[int, typer.Option("--expires-days", help="Days until the trust root expires.")] = 365,
    floor: Annotated[
        Path | None, typer.Option("--floor", help="A JSON file with the policy floor (default: the embedded floor).")
    ] = None,
) -> None:
    """Issue (or re-issue with a higher version) the trust root, signed by the root key(s).

    Example: oracle trust init --out /etc/oracle/trust-root.json --root-key ~/keys/root.pem \\
        --attestation ci.pub --submission submitter.pub --provenance trainer.pub --waiver-approval reviewer.pub
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from guards.keys import load_public_key, load_signing_key
    from guards.trust import TrustError, build_trust_root, parse_trust_root
    from oracle_base.atomic_write import write_atomically

    target = _outside_checkouts(out, "the trust root")
    if not 1 <= threshold <= len(root_keys):
        raise UsageError(f"--threshold {threshold} must be between 1 and the number of --root-key ({len(root_keys)})")
    if expires_days < 1:
        raise UsageError("--expires-days must be at least 1")
    signers = [load_signing_key({"ORACLE_SIGNING_KEY": str(path)}) for path in root_keys]
    members: dict[str, list[Ed25519PublicKey]] = {
        role: [load_public_key(path) for path in paths or []]
        for role, paths in (
            ("attestation", attestation),
            ("submission", submission),
            ("provenance", provenance),
            ("waiver-approval", waiver_approval),
        )
    }
    previous = 0
    if target.exists():
        try:
            previous = parse_trust_root(target, target.read_bytes()).version
        except (TrustError, OSError):
            previous = 0
    chosen = version if version is not None else previous + 1
    if chosen <= previous:
        raise UsageError(f"--version {chosen} must be above the existing trust root's version {previous} (no rollback)")
    floor_document = _floor_document(floor)
    try:
        data = build_trust_root(
            [key for key in signers if key is not None],
            members,
            version=chosen,
            expires=datetime.now(UTC) + timedelta(days=expires_days),
            floor=floor_document,
            threshold=threshold,
        )
    except TrustError as exc:  # what was asked for would not make a trust root: the options to change, not a refusal
        raise UsageError(f"the trust root would not verify: {exc}") from exc
    write_atomically(target, data)
    roles = ", ".join(f"{role} {len(keys)}" for role, keys in members.items())
    typer.echo(f"trust root v{chosen} written to {target} (root threshold {threshold}; keys: {roles})")
    typer.echo("point ORACLE_TRUST_ROOT at it (or install it as /etc/oracle/trust-root.json on gated machines)")


def _floor_document(path: Path | None) -> dict[str, object]:
    if path is None:
        return {}  # the embedded floor (policies.floor.PolicyFloor's defaults), which moves with the code
    from pydantic import ValidationError

    from policies.floor import PolicyFloor

    try:
        floor: dict[str, object] = PolicyFloor.model_validate_json(path.read_bytes()).model_dump(mode="json")
        return floor
    except OSError as exc:
        raise UsageError(f"--floor {path}: cannot read ({exc.strerror})") from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise UsageError(f"--floor {path}: {where}: {error['msg']}") from exc


@trust_app.command("show")
def trust_show_command(
    output_format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
) -> None:
    """The trust root in force on this machine: where it is, its version and expiry, the keys of each role, the floor.

    Example: oracle trust show --format json
    """
    from guards.trust import SIGNING_ROLES, load_trust_root

    trust = load_trust_root(_work_tree_of(Path.cwd().resolve()))
    summary = {
        "source": trust.source,
        "development": trust.development,
        "version": trust.version,
        "expires": trust.expires.isoformat() if trust.expires else None,
        "digest": trust.digest,
        "roles": {role: sorted(trust.keys_for(role)) for role in SIGNING_ROLES},
        "floor": dict(trust.floor),
    }
    if output_format == "json":
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(trust.label)
    if trust.expires:
        typer.echo(f"expires {trust.expires.isoformat()}")
    for role in SIGNING_ROLES:
        typer.echo(f"  {role}: {', '.join(sorted(trust.keys_for(role))) or '(no keys)'}")
    typer.echo(f"floor: {json.dumps(dict(trust.floor), sort_keys=True) if trust.floor else 'the embedded default'}")


@trust_app.command("verify")
def trust_verify_command() -> None:
    """Verify the trust root: root signatures (threshold), expiry, key ids; exit 1 if it fails or none is set up.

    Example: ORACLE_TRUST_ROOT=/etc/oracle/trust-root.json oracle trust verify
    """
    from guards.trust import SETUP_HINT, TrustError, load_trust_root

    trust = load_trust_root(_work_tree_of(Path.cwd().resolve()))
    if trust.development:
        raise TrustError(f"no trust root configured: only the development default applies; {SETUP_HINT}")
    typer.echo(f"trust root OK: {trust.label}, expires {trust.expires.isoformat() if trust.expires else '?'}")
