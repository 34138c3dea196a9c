"""The outcome of one gate run: what the report writers, the attestation and the audit log all read."""

from __future__ import annotations

from dataclasses import dataclass, field

from policies.rule import Finding, Gate, Rule


@dataclass(frozen=True)
class WaiverUse:
    """A waiver that suppressed at least one finding in this run."""

    rule_id: str
    reason: str
    owner: str
    expires: str  # ISO date
    selector: str  # the path glob or fingerprint it matched by
    fingerprints: tuple[str, ...]
    created: str = ""  # ISO date the waiver records as its creation

    def as_json(self) -> dict[str, str]:
        """What records (attestation, submission) list of a waiver in use."""
        return {
            "rule": self.rule_id,
            "selector": self.selector,
            "owner": self.owner,
            "created": self.created,
            "expires": self.expires,
        }


@dataclass
class Examined:
    files: list[str] = field(default_factory=list)
    # path → why it was left out or only partly read (too large, unreadable, a link leaving the tree, ...); every one
    # of them is also a finding (COV001) unless it is a link whose target is scanned itself
    skipped: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"count": len(self.files), "files": self.files, "skipped": self.skipped}


@dataclass
class GateResult:
    gate: Gate
    root: str
    rules: list[Rule]  # the rules evaluated in this run (catalog entries for reports)
    findings: list[Finding] = field(default_factory=list)  # not waived
    waived: list[tuple[Finding, WaiverUse]] = field(default_factory=list)
    examined: dict[str, Examined] = field(default_factory=dict)  # policy → what it looked at
    errors: list[str] = field(default_factory=list)  # checks that failed internally: never a pass
    expired_waivers: list[str] = field(default_factory=list)  # they no longer apply; reported so someone renews them
    stale_waivers: list[str] = field(default_factory=list)  # globs that match no file: they apply to nothing
    fail_on: str = "error"
    floor: str = ""  # the trust root whose policy floor judged the settings and waivers (its label)
    # The settings used and where each came from (policies.settings.ResolvedSettings.as_json), whether the running
    # environment was judged, and where the decision was recorded (the CLI fills in "audit").
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def waivers_used(self) -> list[dict[str, str]]:
        """Each waiver that suppressed a finding, once."""
        unique = {tuple(use.as_json().items()): use.as_json() for _, use in self.waived}
        return [unique[key] for key in sorted(unique)]

    @property
    def blocking(self) -> list[Finding]:
        levels = {"error"} if self.fail_on == "error" else {"error", "warning"}
        return [finding for finding in self.findings if str(finding.severity) in levels]

    @property
    def passed(self) -> bool:
        return not self.blocking and not self.errors

    def as_json(self) -> dict[str, object]:
        return {
            "gate": str(self.gate),
            "root": self.root,
            "passed": self.passed,
            "findings": [finding.as_json() for finding in self.findings],
            "waived": [
                {**finding.as_json(), "waiver": {"reason": use.reason, "owner": use.owner, "expires": use.expires}}
                for finding, use in self.waived
            ],
            "examined": {policy: examined.as_json() for policy, examined in self.examined.items()},
            "errors": self.errors,
            "expired_waivers": self.expired_waivers,
            "stale_waivers": self.stale_waivers,
            "floor": self.floor,
            "settings": self.settings,
            "rules": [rule.id for rule in self.rules],
        }
