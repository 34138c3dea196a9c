"""A red-team corpus for the gate (issue 15, Done-when 3): violation cases of every bypass and fail-open class and
clean controls, generated as data (cases.py, controls.py), each built as its own git repository and judged by the ci
gate (harness.py). `python -m tests.policies.corpus` prints detection per class."""
