"""infra/terraform, checked without Terraform: it parses, every variable is declared once and documented, every
labelled resource carries the project labels, and the caps in its validations are the policy's ([cluster] of
policies/policies.toml).

Each checker returns a list of problems; the real tree must have none, and the negative tests feed each checker a
small snippet it has to reject. python-hcl2 (v8) renders a parsed file as dicts: blocks are lists of bodies, block
labels and string literals keep their quotes ('"oracle"'), and any other expression is text wrapped in "${...}".
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hcl2
import pytest
from lark.exceptions import LarkError

from policies.settings import ClusterSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = ROOT / "infra" / "terraform"
TFVARS_EXAMPLE = TERRAFORM_DIR / "terraform.tfvars.example"

Doc = dict[str, Any]
Docs = Mapping[str, Doc]  # file name → parsed file

_OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False)

# Resource types whose provider schema has a labels map, and that map's name. A type used in the tree must be here
# or in UNLABELLED_TYPES, so a new type forces the question.
LABEL_ATTRIBUTE: dict[str, str] = {
    "yandex_vpc_network": "labels",
    "yandex_vpc_subnet": "labels",
    "yandex_vpc_gateway": "labels",
    "yandex_vpc_route_table": "labels",
    "yandex_vpc_security_group": "labels",
    "yandex_iam_service_account": "labels",
    "yandex_kms_symmetric_key": "labels",
    "yandex_compute_gpu_cluster": "labels",
    "yandex_compute_instance": "labels",
    "yandex_compute_instance_group": "labels",
    "yandex_kubernetes_cluster": "labels",
    "yandex_kubernetes_node_group": "labels",
    "yandex_storage_bucket": "tags",
}
UNLABELLED_TYPES = frozenset(
    {
        "yandex_resourcemanager_folder_iam_member",
        "yandex_kms_symmetric_key_iam_member",
        "yandex_storage_bucket_iam_binding",
    }
)
LABELS_REFERENCE = re.compile(r"^\$\{(local\.labels|merge\(local\.labels\s*,.*\))\}$", re.DOTALL)

# Policy field → the variables whose product it caps.
POLICY_CAPS: dict[str, frozenset[str]] = {
    "max_gpus_per_node": frozenset({"gpus_per_node"}),
    "max_nodes": frozenset({"node_count"}),
    "max_total_gpus": frozenset({"node_count", "gpus_per_node"}),
    "monthly_budget_usd": frozenset({"monthly_budget_usd"}),
}
REQUIRED_OUTPUTS = ("bucket_name", "cluster_id", "node_group_id", "network_id")

VAR_REFERENCE = re.compile(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)")
_SUBJECT = r"var\.\w+(?:\s*\*\s*var\.\w+)*"
_NUMBER = r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
_UPPER_BOUND = re.compile(rf"^\s*(?P<subject>{_SUBJECT})\s*(?:<=|<)\s*(?P<number>{_NUMBER})\s*$")
_UPPER_BOUND_REVERSED = re.compile(rf"^\s*(?P<number>{_NUMBER})\s*(?:>=|>)\s*(?P<subject>{_SUBJECT})\s*$")

SECRET_ATTRIBUTES = frozenset(
    {"token", "access_key", "secret_key", "service_account_key_file", "password", "private_key"}
)
_SECRET_OR_ID = {
    "an IAM token": re.compile(r"\bt1\.[A-Za-z0-9_-]{20,}"),
    "an OAuth token": re.compile(r"\by[0-3]_[A-Za-z0-9_-]{20,}"),
    "an API key": re.compile(r"\bAQVN[A-Za-z0-9_-]{20,}"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY"),
    "a hard-coded cloud resource id": re.compile(r'^"(?=[a-z0-9]*\d)[a-z][a-z0-9]{19}"$'),
}


# --- parsing ---------------------------------------------------------------------------------------------------


def parse_hcl(text: str) -> Doc:
    parsed: Doc = hcl2.loads(text, serialization_options=_OPTIONS)
    return parsed


def parse_tree(directory: Path) -> tuple[dict[str, Doc], list[str]]:
    """Every .tf file of the folder, parsed; files that do not parse are problems, not exceptions."""
    docs: dict[str, Doc] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.tf")):
        try:
            docs[path.name] = parse_hcl(path.read_text(encoding="utf-8"))
        except LarkError as exc:
            problems.append(f"{path.name}: does not parse: {str(exc).splitlines()[0]}")
    return docs, problems


def unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def blocks(docs: Docs, kind: str, n_labels: int) -> Iterator[tuple[str, tuple[str, ...], Doc]]:
    """(file, labels, body) of every `kind` block, e.g. ("a.tf", ("yandex_vpc_network", "main"), {...})."""

    def descend(node: Doc, depth: int, labels: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Doc]]:
        if depth == 0:
            yield labels, node
            return
        for key, value in node.items():
            yield from descend(value, depth - 1, (*labels, unquote(key)))

    for file, doc in docs.items():
        for entry in doc.get(kind, []):
            for labels, body in descend(entry, n_labels, ()):
                yield file, labels, body


def strings(node: object) -> Iterator[str]:
    """Every string value under a node (attribute values, list items), never the attribute names."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def attributes(node: object) -> Iterator[tuple[str, object]]:
    """(name, value) of every attribute and nested block under a node."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield unquote(key), value
            yield from attributes(value)
    elif isinstance(node, list):
        for item in node:
            yield from attributes(item)


def declared_variables(docs: Docs) -> set[str]:
    return {labels[0] for _, labels, _ in blocks(docs, "variable", 1)}


def variable_defaults(docs: Docs) -> dict[str, object]:
    return {labels[0]: body["default"] for _, labels, body in blocks(docs, "variable", 1) if "default" in body}


def expression(text: str) -> str:
    return text[2:-1] if text.startswith("${") and text.endswith("}") else text


# --- checkers --------------------------------------------------------------------------------------------------


def check_unique_declarations(docs: Docs) -> list[str]:
    seen: dict[str, list[str]] = defaultdict(list)
    for kind, n_labels in (("variable", 1), ("output", 1), ("resource", 2), ("data", 2)):
        for file, labels, _ in blocks(docs, kind, n_labels):
            seen[f"{kind} {'.'.join(labels)}"].append(file)
    for file, doc in docs.items():
        for entry in doc.get("locals", []):
            for name in entry:
                seen[f"local.{name}"].append(file)
    return [
        f"{what} is declared {len(files)} times ({', '.join(files)})" for what, files in seen.items() if len(files) > 1
    ]


def check_variables_documented(docs: Docs) -> list[str]:
    problems = []
    for file, (name,), body in blocks(docs, "variable", 1):
        if "type" not in body:
            problems.append(f"{file}: variable {name} has no type")
        if not unquote(str(body.get("description", ""))).strip():
            problems.append(f"{file}: variable {name} has no description")
    return problems


def check_variable_references(docs: Docs) -> list[str]:
    """Every var.X anywhere is declared; every declared variable is used outside the variable blocks."""
    declared = declared_variables(docs)
    problems = []
    used: set[str] = set()
    for file, doc in docs.items():
        for kind, content in doc.items():
            for text in strings(content):
                for name in VAR_REFERENCE.findall(text):
                    if name not in declared:
                        problems.append(f"{file}: var.{name} is used but never declared")
                    if kind != "variable":
                        used.add(name)
    problems += [f"variable {name} is declared but never used" for name in sorted(declared - used)]
    return problems


def check_labels(docs: Docs) -> list[str]:
    problems = []
    for file, (kind, name), body in blocks(docs, "resource", 2):
        if kind in UNLABELLED_TYPES:
            continue
        attribute = LABEL_ATTRIBUTE.get(kind)
        if attribute is None:
            problems.append(
                f"{file}: {kind}.{name}: type not classified; add it to LABEL_ATTRIBUTE or UNLABELLED_TYPES"
            )
        elif not LABELS_REFERENCE.match(str(body.get(attribute, ""))):
            problems.append(f"{file}: {kind}.{name} must set {attribute} = local.labels (or merge(local.labels, ...))")
    return problems


def check_local_labels(docs: Docs) -> list[str]:
    labels = [entry["labels"] for doc in docs.values() for entry in doc.get("locals", []) if "labels" in entry]
    if len(labels) != 1 or not isinstance(labels[0], dict):
        return ["local.labels must be declared once, as an object literal"]
    entries = {unquote(key): value for key, value in labels[0].items()}
    problems = []
    if entries.get("project") != "${var.project}":
        problems.append("local.labels must map project = var.project")
    if entries.get("managed-by") != '"terraform"':
        problems.append('local.labels must map "managed-by" = "terraform"')
    return problems


def check_project_mark(docs: Docs, cluster: ClusterSettings) -> list[str]:
    default = variable_defaults(docs).get("project")
    if default is None or unquote(str(default)) != cluster.project:
        return [f"variable project must default to the policy's mark {cluster.project!r}, not {default!r}"]
    return []


def validation_bounds(docs: Docs) -> list[tuple[frozenset[str], float, str]]:
    """(variables, bound, where) of every upper bound `var.a [* var.b] <= N` (or `N >= ...`) that stands as its own
    term of a validation condition. A strict `< N` counts as N: conservative for a cap."""
    bounds = []
    for file, (name,), body in blocks(docs, "variable", 1):
        for validation in body.get("validation", []):
            for term in re.split(r"&&|\|\||[()]", expression(str(validation.get("condition", "")))):
                match = _UPPER_BOUND.match(term) or _UPPER_BOUND_REVERSED.match(term)
                if match:
                    subject = frozenset(re.findall(r"var\.(\w+)", match["subject"]))
                    bounds.append((subject, float(match["number"]), f"{file}: variable {name}"))
    return bounds


def check_caps(docs: Docs, cluster: ClusterSettings) -> list[str]:
    bounds = validation_bounds(docs)
    problems = []
    for field, subject in POLICY_CAPS.items():
        limit = getattr(cluster, field)
        what = " * ".join(sorted(subject))
        found = [(bound, where) for variables, bound, where in bounds if variables == subject]
        if not found:
            problems.append(f"no validation caps {what} (policy cluster.{field} = {limit})")
        problems += [
            f"{where}: caps {what} at {bound:g}, above policy cluster.{field} = {limit}"
            for bound, where in found
            if bound > limit
        ]
    return problems


def check_values_within_caps(values: Mapping[str, object], cluster: ClusterSettings, source: str) -> list[str]:
    """The numbers a plan would use (defaults, or an example's assignments over them) respect the policy caps."""
    problems = []
    for field, subject in POLICY_CAPS.items():
        numbers = [float(value) for name in subject if isinstance(value := values.get(name), int | float)]
        if len(numbers) == len(subject):
            product = math.prod(numbers)
            if product > getattr(cluster, field):
                problems.append(f"{source}: {' * '.join(sorted(subject))} = {product:g} exceeds cluster.{field}")
    return problems


def check_tfvars_example(example: Doc, declared: set[str]) -> list[str]:
    return [
        f"tfvars example assigns {name}, which is not a declared variable" for name in example if name not in declared
    ]


def _version_floor(constraint: str) -> tuple[int, int] | None:
    match = re.search(r"(?:>=|~>|=|^)\s*(\d+)\.(\d+)", constraint)
    return (int(match[1]), int(match[2])) if match else None


def _is_pinned(constraint: str) -> bool:
    """An exact version, or a floor with an upper bound (`~> 0.145`, `>= 0.145, < 1.0`)."""
    exact = re.fullmatch(r"=?\s*\d+\.\d+\.\d+", constraint.strip())
    return bool(exact or (re.search(r"~>|<", constraint) and _version_floor(constraint)))


def check_versions(docs: Docs) -> list[str]:
    """The yandex provider comes from yandex-cloud/yandex with a bounded version; Terraform's floor admits the
    cross-variable validations when there are any (Terraform >= 1.9)."""
    settings = [body for _, _, body in blocks(docs, "terraform", 0)]
    providers = {
        unquote(name): spec
        for body in settings
        for block in body.get("required_providers", [])
        for name, spec in block.items()
    }
    problems = []
    yandex = providers.get("yandex")
    if not isinstance(yandex, dict) or unquote(str(yandex.get("source"))) != "yandex-cloud/yandex":
        problems.append('required_providers must declare yandex = { source = "yandex-cloud/yandex", ... }')
    for name, spec in providers.items():
        version = unquote(str(spec.get("version", ""))) if isinstance(spec, dict) else ""
        if not _is_pinned(version):
            problems.append(
                f"provider {name} is not pinned (want a bounded constraint such as ~> 0.145, got {version!r})"
            )
    floors = [_version_floor(unquote(str(body["required_version"]))) for body in settings if "required_version" in body]
    floor = floors[0] if floors else None
    if floor is None:
        return [*problems, "terraform.required_version is missing or has no lower bound"]
    for file, (name,), body in blocks(docs, "variable", 1):
        others = {
            other
            for validation in body.get("validation", [])
            for other in VAR_REFERENCE.findall(str(validation.get("condition", "")))
            if other != name
        }
        if others and floor < (1, 9):
            problems.append(f"{file}: validation of {name} refers to {sorted(others)}: needs required_version >= 1.9")
    return problems


def check_no_secrets(docs: Docs) -> list[str]:
    problems = []
    for file, doc in docs.items():
        problems += [
            f"{file}: sets {name}; credentials belong in the environment"
            for name, _ in attributes(doc)
            if name in SECRET_ATTRIBUTES
        ]
        for text in strings(doc):
            problems += [
                f"{file}: {unquote(text)[:40]!r} looks like {what}"
                for what, pattern in _SECRET_OR_ID.items()
                if pattern.search(text)
            ]
    return problems


def check_required_outputs(docs: Docs) -> list[str]:
    declared = {labels[0] for _, labels, _ in blocks(docs, "output", 1)}
    return [f"output {name} is missing" for name in REQUIRED_OUTPUTS if name not in declared]


# --- the real tree ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> dict[str, Doc]:
    docs, problems = parse_tree(TERRAFORM_DIR)
    assert not problems
    return docs


@pytest.fixture(scope="module")
def cluster() -> ClusterSettings:
    return load_settings(ROOT).cluster


@pytest.fixture(scope="module")
def example() -> Doc:
    return parse_hcl(TFVARS_EXAMPLE.read_text(encoding="utf-8"))


def test_every_terraform_file_parses() -> None:
    docs, problems = parse_tree(TERRAFORM_DIR)
    assert problems == []
    assert {"versions.tf", "variables.tf", "outputs.tf"} <= set(docs)


def test_nothing_is_declared_twice(tree: Docs) -> None:
    assert check_unique_declarations(tree) == []


def test_every_variable_has_a_type_and_a_description(tree: Docs) -> None:
    assert check_variables_documented(tree) == []


def test_every_labelled_resource_carries_the_project_labels(tree: Docs) -> None:
    assert check_labels(tree) == []
    assert check_local_labels(tree) == []


def test_the_project_mark_is_the_policy_s(tree: Docs, cluster: ClusterSettings) -> None:
    assert check_project_mark(tree, cluster) == []


def test_validation_caps_are_at_most_the_policy(tree: Docs, cluster: ClusterSettings) -> None:
    assert check_caps(tree, cluster) == []


def test_defaults_and_example_stay_within_the_policy(tree: Docs, cluster: ClusterSettings, example: Doc) -> None:
    defaults = variable_defaults(tree)
    assert check_values_within_caps(defaults, cluster, "defaults") == []
    assert check_values_within_caps({**defaults, **example}, cluster, "terraform.tfvars.example") == []


def test_every_variable_is_declared_and_used(tree: Docs) -> None:
    assert check_variable_references(tree) == []


def test_tfvars_example_assigns_only_declared_variables(tree: Docs, example: Doc) -> None:
    assert check_tfvars_example(example, declared_variables(tree)) == []
    assert check_no_secrets({TFVARS_EXAMPLE.name: example}) == []


def test_provider_is_pinned_and_terraform_admits_the_validations(tree: Docs) -> None:
    assert check_versions(tree) == []


def test_no_credentials_or_hard_coded_ids(tree: Docs) -> None:
    assert check_no_secrets(tree) == []


def test_required_outputs_are_declared(tree: Docs) -> None:
    assert check_required_outputs(tree) == []


# --- the checkers can fail -------------------------------------------------------------------------------------

POLICY = ClusterSettings()  # the defaults are the project's policy: 8 per node, 32 nodes, 256 in all, 250000 USD


def parse_snippets(**files: str) -> dict[str, Doc]:
    return {f"{name}.tf": parse_hcl(text) for name, text in files.items()}


def variable(name: str, condition: str = "true", default: str = "1") -> str:
    return f"""
variable "{name}" {{
  type        = number
  description = "{name}"
  default     = {default}
  validation {{
    condition     = {condition}
    error_message = "no"
  }}
}}
"""


CAPPED = {
    "gpus_per_node": "var.gpus_per_node <= 8",
    "node_count": "var.node_count >= 1 && var.node_count <= 32",
    "total": "var.node_count * var.gpus_per_node <= 256",
    "monthly_budget_usd": "var.monthly_budget_usd > 0 && var.monthly_budget_usd <= 250000",
}


def capped_variables(**overrides: str) -> str:
    conditions = {**CAPPED, **overrides}
    total = conditions.pop("total")
    return "".join(
        variable(name, f"({condition}) && ({total})" if name == "node_count" else condition)
        for name, condition in conditions.items()
    )


def test_parse_failure_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.tf").write_text('variable "x" {\n  type =\n}\n')
    docs, problems = parse_tree(tmp_path)
    assert docs == {}
    assert len(problems) == 1
    assert problems[0].startswith("broken.tf: does not parse: Unexpected token")


def test_variable_declared_in_two_files_is_reported() -> None:
    docs = parse_snippets(a=variable("zone"), b=variable("zone"))
    assert check_unique_declarations(docs) == ["variable zone is declared 2 times (a.tf, b.tf)"]


def test_variable_without_description_is_reported() -> None:
    docs = parse_snippets(a='variable "zone" {\n  type = string\n}\n')
    assert check_variables_documented(docs) == ["a.tf: variable zone has no description"]


@pytest.mark.parametrize(
    "labels",
    ["", 'labels = { project = "oracle" }', "labels = var.labels", "tags = local.labels"],
    ids=["missing", "literal", "not-local", "wrong-attribute"],
)
def test_resource_without_the_project_labels_is_reported(labels: str) -> None:
    docs = parse_snippets(a=f'resource "yandex_vpc_network" "main" {{\n  name = "n"\n  {labels}\n}}\n')
    assert check_labels(docs) == [
        "a.tf: yandex_vpc_network.main must set labels = local.labels (or merge(local.labels, ...))"
    ]


def test_merged_labels_are_accepted_and_unknown_types_are_reported() -> None:
    docs = parse_snippets(
        a='resource "yandex_vpc_subnet" "s" {\n  labels = merge(local.labels, { role = "x" })\n}\n'
        'resource "yandex_mdb_postgresql_cluster" "db" {\n  labels = local.labels\n}\n'
    )
    assert check_labels(docs) == [
        "a.tf: yandex_mdb_postgresql_cluster.db: type not classified; add it to LABEL_ATTRIBUTE or UNLABELLED_TYPES"
    ]


def test_local_labels_without_managed_by_is_reported() -> None:
    docs = parse_snippets(a="locals {\n  labels = { project = var.project }\n}\n")
    assert check_local_labels(docs) == ['local.labels must map "managed-by" = "terraform"']


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            {"gpus_per_node": "var.gpus_per_node <= 16"},
            "caps gpus_per_node at 16, above policy cluster.max_gpus_per_node = 8",
        ),
        ({"total": "512 >= var.gpus_per_node * var.node_count"}, "caps gpus_per_node * node_count at 512, above"),
        ({"monthly_budget_usd": "var.monthly_budget_usd < 1e6"}, "caps monthly_budget_usd at 1e+06, above"),
        ({"node_count": "var.node_count - 10 <= 32"}, "no validation caps node_count (policy cluster.max_nodes = 32)"),
    ],
    ids=["per-node", "total-reversed", "budget-strict", "node-count-not-a-plain-bound"],
)
def test_cap_above_or_missing_from_policy_is_reported(overrides: dict[str, str], problem: str) -> None:
    problems = check_caps(parse_snippets(a=capped_variables(**overrides)), POLICY)
    assert len(problems) == 1
    assert problem in problems[0]


def test_caps_equal_to_the_policy_pass() -> None:
    assert check_caps(parse_snippets(a=capped_variables()), POLICY) == []


def test_values_above_the_policy_are_reported() -> None:
    values = {"gpus_per_node": 8, "node_count": 33, "monthly_budget_usd": 1000}
    assert check_values_within_caps(values, POLICY, "x") == [
        "x: node_count = 33 exceeds cluster.max_nodes",
        "x: gpus_per_node * node_count = 264 exceeds cluster.max_total_gpus",
    ]


def test_undeclared_and_unused_variables_are_reported() -> None:
    docs = parse_snippets(
        a=variable("used") + variable("unused", "var.unused <= var.used"),
        b='output "o" {\n  value = "${var.used}-${var.missing}"\n}\n',
    )
    assert check_variable_references(docs) == [
        "b.tf: var.missing is used but never declared",
        "variable unused is declared but never used",
    ]


def test_tfvars_assigning_an_unknown_variable_is_reported() -> None:
    example = parse_hcl('zone = "ru-central1-a"\ngpus = 8\n')
    assert check_tfvars_example(example, {"zone"}) == ["tfvars example assigns gpus, which is not a declared variable"]


@pytest.mark.parametrize(
    ("required_version", "version", "problem"),
    [
        (">= 1.9.0", None, "provider yandex is not pinned"),
        (">= 1.9.0", ">= 0.1", "provider yandex is not pinned"),
        (">= 1.5.0", "~> 0.145", "needs required_version >= 1.9"),
    ],
    ids=["no-version", "unbounded", "terraform-too-old"],
)
def test_unpinned_provider_or_old_terraform_is_reported(
    required_version: str, version: str | None, problem: str
) -> None:
    pin = f', version = "{version}"' if version else ""
    terraform = (
        f'terraform {{\n  required_version = "{required_version}"\n'
        f'  required_providers {{\n    yandex = {{ source = "yandex-cloud/yandex"{pin} }}\n  }}\n}}\n'
    )
    docs = parse_snippets(a=terraform + variable("b") + variable("a", "var.a <= var.b"))
    problems = check_versions(docs)
    assert len(problems) == 1
    assert problem in problems[0]


def test_credentials_and_hard_coded_ids_are_reported() -> None:
    docs = parse_snippets(
        a='provider "yandex" {\n'
        '  token     = "t1.9euelZqXk5GUl5KSjZ2OlpKPm5fNnu3rnpWa"\n'
        '  folder_id = "b1g2abcdefghij3klmno"\n'
        "}\n"
    )
    assert check_no_secrets(docs) == [
        "a.tf: sets token; credentials belong in the environment",
        "a.tf: 't1.9euelZqXk5GUl5KSjZ2OlpKPm5fNnu3rnpWa' looks like an IAM token",
        "a.tf: 'b1g2abcdefghij3klmno' looks like a hard-coded cloud resource id",
    ]


def test_missing_output_is_reported() -> None:
    docs = parse_snippets(a='output "cluster_id" {\n  value = 1\n}\n')
    assert check_required_outputs(docs) == [
        "output bucket_name is missing",
        "output node_group_id is missing",
        "output network_id is missing",
    ]
