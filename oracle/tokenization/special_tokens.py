"""Special tokens, in id order: documents, padding, chat turns, and the project's own markers.

They are the first ids of the vocabulary (0..8) so their ids never depend on the training corpus. Unused ids up to
the model's vocabulary size are filled with `<|reserved_N|>` tokens, which keeps the vocabulary exactly the size
the model config declares whatever the corpus (and leaves room for later special tokens without a resize).
"""

END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
ORACLE_SYS = "<|oracle_sys|>"  # the default system prompt block (default_system.txt)
ORACLE_INTRO = "<|oracle_intro|>"  # the model's introduction (default_intro.txt)
AUTHOR = "<|author|>"  # attribution of a document's author in the training data

SPECIAL_TOKENS: tuple[str, ...] = (
    END_OF_TEXT,
    PAD,
    SYSTEM,
    USER,
    ASSISTANT,
    END_OF_TURN,
    ORACLE_SYS,
    ORACLE_INTRO,
    AUTHOR,
)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def reserved_token(index: int) -> str:
    return f"<|reserved_{index}|>"


def is_reserved(token: str) -> bool:
    return token.startswith("<|reserved_") and token.endswith("|>")


def never_generated(token: str) -> bool:
    """Tokens a model has no reason to produce: padding and the reserved (unused) ids. Serving never samples them."""
    return token == PAD or is_reserved(token)
