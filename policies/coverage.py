"""Policy `coverage`: every selected file is examined, or the gate fails.

COV001 turns what the reading layer (policies/context.py) could not analyse into findings: text larger than
`scan.max_file_bytes`, Python that does not parse on this interpreter (the statements that do parse were analysed,
the rest read as text only), a notebook that is not valid JSON, a file that cannot be read. It runs last, after the
policies whose reading records these, and it also reads what nobody else had to: the text files over the size
limit, and the files the selection left out as unreadable.
"""

from __future__ import annotations

from policies.context import ScanContext
from policies.rule import ALL_GATES, Policy, PolicyResult, Rule, Severity

NAME = "coverage"

NOT_ANALYSED = Rule(
    id="COV001",
    policy=NAME,
    title="File not fully analysed",
    severity=Severity.error,
    gates=ALL_GATES,
    rationale="A check that cannot run is an error, never a pass: a file the detectors could not read, decode or "
    "parse may hold exactly what they look for, so the gate cannot vouch for it.",
    fix="Make the file readable and analysable (UTF-8 or a byte-order mark, Python that parses on the gate's "
    "interpreter, valid notebook JSON, under scan.max_file_bytes), remove it, or waive it for its path with a "
    "reason once a person has read it.",
    example="data/big_prompts.txt   # 40 MB of text, over scan.max_file_bytes: never searched",
    example_fix="split it under the limit, or waive COV001 for data/big_prompts.txt (owner, reason, expiry)",
)
RULES = (NOT_ANALYSED,)


def check(ctx: ScanContext) -> PolicyResult:
    result = PolicyResult()
    limit = ctx.settings.scan.max_file_bytes
    for path in ctx.files:
        result.examined.append(path)
        if ctx.size(path) > limit:
            ctx.text(path)  # records text over the limit (binary content is sniffed, not read as text)
    for path, why in ctx.left_out.items():
        if why.startswith("unreadable"):
            ctx.not_analysed(path, why)
    for path, reasons in sorted(ctx.not_analysed_records.items()):
        line = min(reasons.values()) if all(reasons.values()) else 0
        message = f"{path} was not fully analysed: " + "; ".join(reasons)
        matched = "; ".join(sorted(_without_places(why) for why in reasons))
        result.findings.append(NOT_ANALYSED.finding(path, line, 1 if line else 0, message, matched))
    return result


def _without_places(why: str) -> str:
    """The reason without line numbers or quoted text, so the fingerprint stays when lines move."""
    return why.split(" at ", 1)[0] if why.startswith("Python that does not parse") else why


POLICY = Policy(name=NAME, rules=RULES, check=check)
