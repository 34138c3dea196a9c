"""The offline schema for model card metadata: the Hub's vocabularies and our own rules."""

from __future__ import annotations

import pytest

from hub.metadata import (
    CardError,
    hub_licenses,
    hub_pipeline_tags,
    iso_639_1_languages,
    split_front_matter,
    validate_card_metadata,
    validate_card_text,
)

OURS = ["oracle-ai"]


def valid_metadata(**changes: object) -> dict[str, object]:
    metadata: dict[str, object] = {
        "license": "apache-2.0",
        "language": ["en", "ru"],
        "library_name": "oracle",
        "pipeline_tag": "text-generation",
        "tags": ["moe", "mixture-of-experts"],
    }
    metadata.update(changes)
    return metadata


def only_problem(metadata: dict[str, object]) -> str:
    problems = validate_card_metadata(metadata, allowed_namespaces=OURS)
    assert len(problems) == 1, problems
    return problems[0]


def test_valid_metadata_has_no_problems() -> None:
    assert validate_card_metadata(valid_metadata(), allowed_namespaces=OURS) == []


def test_a_single_language_string_is_accepted() -> None:
    assert validate_card_metadata(valid_metadata(language="en"), allowed_namespaces=OURS) == []


@pytest.mark.parametrize("key", ["license", "language", "library_name", "pipeline_tag", "tags"])
def test_each_required_key_is_reported_when_missing(key: str) -> None:
    metadata = valid_metadata()
    del metadata[key]
    assert only_problem(metadata).startswith(f"{key}: missing")


def test_unknown_license_is_reported_with_a_suggestion() -> None:
    problem = only_problem(valid_metadata(license="apache2"))
    assert problem.startswith("license: 'apache2' is not a Hub license identifier")
    assert "'apache-2.0'" in problem


def test_license_other_needs_a_name_and_a_link() -> None:
    problems = validate_card_metadata(valid_metadata(license="other"), allowed_namespaces=OURS)
    assert [p.split(":")[0] for p in problems] == ["license_name", "license_link"]
    named = valid_metadata(license="other", license_name="oracle-license-1.0", license_link="LICENSE")
    assert validate_card_metadata(named, allowed_namespaces=OURS) == []


def test_a_language_name_is_reported_with_its_code() -> None:
    problem = only_problem(valid_metadata(language=["english", "ru"]))
    assert problem == "language[0]: 'english' is not an ISO 639-1 language code; use 'en'"


def test_a_three_letter_code_is_not_iso_639_1() -> None:
    assert only_problem(valid_metadata(language="eng")).startswith("language: 'eng' is not an ISO 639-1")


def test_unknown_pipeline_tag_is_reported() -> None:
    problem = only_problem(valid_metadata(pipeline_tag="text-generator"))
    assert problem.startswith("pipeline_tag: 'text-generator' is not a Hub pipeline tag")
    assert "'text-generation'" in problem


def test_tags_that_are_not_strings_are_reported_one_by_one() -> None:
    problems = validate_card_metadata(valid_metadata(tags=["moe", 7, {"a": "b"}, " "]), allowed_namespaces=OURS)
    assert [p.split(":")[0] for p in problems] == ["tags[1]", "tags[2]", "tags[3]"]


def test_tags_as_a_bare_string_are_reported() -> None:
    assert only_problem(valid_metadata(tags="moe")).startswith("tags: must be a list of strings")


def test_library_name_must_be_a_plain_string() -> None:
    assert only_problem(valid_metadata(library_name=["oracle"])).startswith("library_name:")
    assert only_problem(valid_metadata(library_name="oracle moe")).startswith("library_name:")


def test_a_nested_null_is_reported_with_its_path() -> None:
    metadata = valid_metadata(widget=[{"text": "hi", "example_title": None}])
    assert only_problem(metadata) == "widget[0].example_title: is null; give it a value or remove the key"


def test_a_null_required_key_is_reported_once() -> None:
    assert only_problem(valid_metadata(license=None)).startswith("license: is null")


def test_a_null_inside_a_list_is_reported() -> None:
    assert only_problem(valid_metadata(tags=["moe", None])).startswith("tags[1]: is null")


def test_a_foreign_base_model_is_refused() -> None:
    problem = only_problem(valid_metadata(base_model="meta-llama/Llama-2-7b"))
    assert problem.startswith("base_model: 'meta-llama/Llama-2-7b' is outside our namespaces (oracle-ai)")


def test_a_foreign_base_model_in_a_list_is_refused() -> None:
    problem = only_problem(valid_metadata(base_model=["oracle-ai/oracle-mini", "mistralai/Mixtral-8x7B-v0.1"]))
    assert problem.startswith("base_model[1]: 'mistralai/Mixtral-8x7B-v0.1' is outside our namespaces")


def test_a_base_model_of_our_own_is_allowed() -> None:
    metadata = valid_metadata(base_model="oracle-ai/oracle850b-moe")
    assert validate_card_metadata(metadata, allowed_namespaces=OURS) == []


def test_a_base_model_that_is_not_a_repo_id_is_refused() -> None:
    assert only_problem(valid_metadata(base_model="oracle850b")).startswith("base_model: 'oracle850b' is not a Hub")


def test_model_index_with_results_is_refused() -> None:
    model_index = [
        {
            "name": "oracle850b",
            "results": [
                {
                    "task": {"type": "text-generation"},
                    "dataset": {"name": "MMLU", "type": "cais/mmlu"},
                    "metrics": [{"type": "accuracy", "value": 0.9}],
                }
            ],
        }
    ]
    problem = only_problem(valid_metadata(**{"model-index": model_index}))
    assert problem.startswith("model-index[0].results[0]: 1 metric(s); our cards report no evaluation results")


def test_model_index_without_results_is_allowed() -> None:
    metadata = valid_metadata(**{"model-index": [{"name": "oracle850b", "results": []}]})
    assert validate_card_metadata(metadata, allowed_namespaces=OURS) == []


def test_every_problem_is_one_line() -> None:
    metadata = {"license": "x", "language": ["english"], "pipeline_tag": "y", "tags": [1], "library_name": None}
    problems = validate_card_metadata(metadata, allowed_namespaces=OURS)
    assert len(problems) == 5
    assert all("\n" not in problem for problem in problems)


def test_split_front_matter_returns_metadata_and_body() -> None:
    metadata, body = split_front_matter("---\nlicense: mit\ntags:\n- a\n---\n# Title\n\ntext\n")
    assert metadata == {"license": "mit", "tags": ["a"]}
    assert body == "# Title\n\ntext\n"


def test_split_front_matter_accepts_windows_line_endings() -> None:
    metadata, body = split_front_matter("---\r\nlicense: mit\r\n---\r\nbody\r\n")
    assert metadata == {"license": "mit"}
    assert body == "body\r\n"


def test_empty_front_matter_is_an_empty_mapping() -> None:
    assert split_front_matter("---\n---\nbody") == ({}, "body")


def test_a_card_without_front_matter_is_an_error() -> None:
    with pytest.raises(CardError, match="line 1: the card does not start with YAML front matter"):
        split_front_matter("# Title\n")


def test_unclosed_front_matter_is_an_error() -> None:
    with pytest.raises(CardError, match="never closed"):
        split_front_matter("---\nlicense: mit\n# Title\n")


def test_bad_yaml_names_the_line_of_the_card() -> None:
    text = "---\nlicense: mit\ntags:\n  - a\n - b\n---\n"  # line 5 of the card breaks the list
    with pytest.raises(CardError, match=r"^line 5: invalid YAML in the front matter") as caught:
        split_front_matter(text)
    assert isinstance(caught.value, ValueError)


def test_front_matter_that_is_not_a_mapping_is_an_error() -> None:
    with pytest.raises(CardError, match="not a mapping"):
        split_front_matter("---\n- a\n- b\n---\n")


def test_validate_card_text_checks_the_front_matter() -> None:
    problems = validate_card_text("---\nlicense: nope\n---\n# Card\n", allowed_namespaces=OURS)
    assert [p.split(":")[0] for p in problems] == ["language", "library_name", "pipeline_tag", "tags", "license"]


def test_the_vocabularies_ship_with_the_package() -> None:
    codes = iso_639_1_languages()
    assert len(codes) == 184
    assert all(len(code) == 2 and code.isalpha() and code.islower() for code in codes)
    assert (codes["en"], codes["ru"]) == ("English", "Russian")
    assert {"apache-2.0", "mit", "openrail", "llama2", "cc-by-4.0", "other"} <= hub_licenses()
    assert {"text-generation", "text2text-generation", "fill-mask", "other"} <= hub_pipeline_tags()
