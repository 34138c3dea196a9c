"""`python -m tests.policies.corpus [--class CLASS ...] [--case NAME ...] [--findings]`: build the corpus in a
temporary folder, run the ci gate over every case, print detection per class, the missed violations and the flagged
clean controls (with --findings, what the gate said about every case)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.policies.corpus", description=__doc__)
    parser.add_argument("--class", dest="classes", action="append", default=[], help="only this class (repeatable)")
    parser.add_argument("--case", dest="names", action="append", default=[], help="only this case (repeatable)")
    parser.add_argument("--findings", action="store_true", help="print what the gate said about every case")
    args = parser.parse_args(argv)

    from tests.floors import GENERIC_TRUST  # noqa: F401  (imports the test helpers before timing)
    from tests.policies.corpus.cases import all_cases
    from tests.policies.corpus.harness import detection_rate, report, run_corpus

    cases = [
        case
        for case in all_cases()
        if (not args.classes or case.klass in args.classes) and (not args.names or case.name in args.names)
    ]
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oracle-corpus-") as directory:
        outcomes = run_corpus(Path(directory), cases)
    elapsed = time.perf_counter() - started
    if args.findings:
        for outcome in outcomes:
            mark = "ok " if outcome.as_expected else "BAD"
            print(
                f"{mark} {outcome.case.expected:<9} {outcome.case.klass:<16} {outcome.case.name}: {outcome.describe()}"
            )
        print()
    print(report(outcomes))
    flagged = sum(o.flagged for o in outcomes if o.case.expected == "clean")
    print(f"\n{len(cases)} cases in {elapsed:.1f} s; detection {detection_rate(outcomes):.1%}, clean flagged {flagged}")
    return 0 if detection_rate(outcomes) >= 0.95 and not flagged else 1


if __name__ == "__main__":
    raise SystemExit(main())
