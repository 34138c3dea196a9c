"""The chat template: one Jinja source, stored in tokenizer_config.json (transformers' `apply_chat_template` uses it)
and rendered here with jinja2 for code that does not use transformers (serving).

    <|system|>You are ...<|end|>
    <|user|>Hello<|end|>
    <|assistant|>Hi!<|end|>
    <|assistant|>            ← add_generation_prompt
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from oracle_base.errors import ConfigurationError

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


class ChatTemplateError(ConfigurationError, ValueError):
    """A conversation the template cannot render (unknown role, missing content)."""


def render_chat(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The prompt text for a conversation, exactly as transformers' apply_chat_template(tokenize=False) renders it."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(message)

    for index, message in enumerate(messages):
        if "role" not in message or "content" not in message:
            raise ChatTemplateError(f"message {index} needs `role` and `content`")
    # The same environment settings transformers uses, so both render the same bytes.
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    environment.globals["raise_exception"] = raise_exception
    template = environment.from_string(CHAT_TEMPLATE)
    return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt)
