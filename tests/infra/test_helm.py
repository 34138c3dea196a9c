"""The Helm chart infra/helm/oracle: generated from the typed manifests, it renders to exactly those manifests.

The `helm` binary cannot be installed here, so the chart is rendered by a tiny renderer of plain
`{{ .Values.a.b }}` references — which is all the templates may contain, and the first thing these tests assert.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.k8s.helm import CHART_DIR, TEMPLATE_FILES, chart_values, default_request, main
from infra.k8s.manifests import serving_manifests, training_manifests
from infra.k8s.validate import validate_manifests
from infra.spec import K8S_RECORD_PATH, PENDING_DIGEST, SpecError, job_environment
from tests.infra.test_k8s import job_request

REFERENCE = re.compile(r"\{\{ \.Values\.([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*) \}\}")


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def render(template: str, values: dict[str, Any]) -> str:
    """What `helm template` does with a plain reference: the value's text, in place."""
    rendered = REFERENCE.sub(lambda match: str(lookup(values, match.group(1))), template)
    assert "{{" not in rendered, "template syntax other than plain .Values references"
    assert "}}" not in rendered
    return rendered


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def render_chart(values: dict[str, Any], chart_dir: Path = CHART_DIR) -> list[dict[str, Any]]:
    documents = []
    for name in TEMPLATE_FILES:
        documents += [d for d in yaml.safe_load_all(render((chart_dir / "templates" / name).read_text(), values)) if d]
    return documents


def committed_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return values


def test_templates_hold_only_plain_value_references() -> None:
    for path in sorted((CHART_DIR / "templates").glob("*.yaml")):
        text = path.read_text()
        assert text.count("{{") == len(REFERENCE.findall(text)), f"{path.name}: template logic beyond .Values"
        assert text.count("{{") == text.count("}}")


def test_the_chart_has_one_template_per_object() -> None:
    assert sorted(p.name for p in (CHART_DIR / "templates").iterdir()) == sorted(TEMPLATE_FILES)
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["type"]) == ("v2", "oracle", "application")


def test_the_chart_renders_exactly_the_validated_manifests_of_the_default_request() -> None:
    request = default_request()
    expected = training_manifests(request, job_environment(PENDING_DIGEST, K8S_RECORD_PATH), "{}") + (
        serving_manifests(request, digest=PENDING_DIGEST)
    )
    rendered = render_chart(committed_values())
    assert rendered == expected
    validate_manifests(rendered)


def test_values_yaml_holds_the_default_request() -> None:
    assert committed_values() == nest(chart_values(default_request()))


def test_the_chart_renders_any_requests_manifests_exactly() -> None:
    request = replace(job_request(nodes=4, gpus_per_node=2, procs_per_node=2, time="100:00:30"), namespace="ml")
    record = '{\n  "commit": "abc",\n  "note": "quotes \\" and \'apostrophes\'"\n}\n'
    values = chart_values(request, digest="e" * 64, record_json=record, checkpoint_size="500Gi", replicas=2, port=9000)
    expected = training_manifests(
        request, job_environment("e" * 64, K8S_RECORD_PATH), record, checkpoint_size="500Gi"
    ) + serving_manifests(request, digest="e" * 64, replicas=2, port=9000)
    rendered = render_chart(nest(values))
    assert rendered == expected
    validate_manifests(rendered)


def test_integers_render_bare_and_strings_quoted() -> None:
    job = (CHART_DIR / "templates" / "training-job.yaml").read_text()
    assert "  completions: {{ .Values.training.nodes }}\n" in job
    assert "  activeDeadlineSeconds: {{ .Values.training.activeDeadlineSeconds }}\n" in job
    assert 'image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"' in job
    # a label of 16 zeros must stay a string, not become the integer 0
    assert 'oracle.dev/config-hash: "{{ .Values.submission.configHashLabel }}"' in job


def test_chart_values_refuse_names_the_templates_cannot_rewrite() -> None:
    with pytest.raises(SpecError, match="not lower-case DNS labels"):
        chart_values(job_request(config_name="Oracle_Mini"))


def test_the_committed_chart_is_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"]) == 0, capsys.readouterr().err


def test_check_names_a_stale_file_and_writing_repairs_the_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "oracle"
    shutil.copytree(CHART_DIR, chart)
    job = chart / "templates" / "training-job.yaml"
    job.write_text(job.read_text().replace("backoffLimit: 0", "backoffLimit: 6"))
    (chart / "templates" / "extra.yaml").write_text("kind: ConfigMap\n")
    assert main(["--check", "--chart-dir", str(chart)]) == 1
    error = capsys.readouterr().err
    assert f"{job} is stale (and 1 more)" in error
    assert "run `python -m infra.k8s.helm`" in error

    assert main(["--chart-dir", str(chart)]) == 0
    assert not (chart / "templates" / "extra.yaml").exists()
    assert main(["--check", "--chart-dir", str(chart)]) == 0
    assert job.read_text() == (CHART_DIR / "templates" / "training-job.yaml").read_text()
