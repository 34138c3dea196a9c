"""`python -m guards.architecture_facts FLAGSHIP CONFIG...`, run from a checkout's root by the architecture policy
(policies.architecture.model_facts): the counts of each model config, computed by the checkout's own model code.

Building the model runs the code under review, so the process policy (guards.process_policy: no network, no weights
file outside the venv, no installer) is installed first, before the policy module or the model code is imported.
It lives here, not in policies/, because the process policy is the gate machinery a layer above the policies.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    from guards.process_policy import ProcessPolicy, install

    install(ProcessPolicy(command="guards architecture", root=Path.cwd())).seal()
    from policies.architecture import config_facts

    flagship, *configs = argv
    print(json.dumps({c: config_facts(Path(c).resolve(), components=c == flagship) for c in configs}))


if __name__ == "__main__":
    main(sys.argv[1:])
