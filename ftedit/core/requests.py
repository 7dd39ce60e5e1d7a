"""Edit requests: "{} is located in" + "Eiffel Tower" -> " Rome"."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ftedit.errors import RequestError

# prompt + target must fit in this many tokens; CounterFact prompts are far shorter.
MAX_TOKENS = 128


@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite. ``prompt`` holds one ``{}`` where the subject goes."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "subject", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RequestError(f"{name} must be a non-empty string, got {_short(value)}")
        if self.target_true is not None and not isinstance(self.target_true, str):
            raise RequestError(f"target_true must be a string, got {_short(self.target_true)}")
        for name in ("prompt", "subject", "target_new", "target_true"):
            value = getattr(self, name)
            if value is not None and not _utf8(value):
                raise RequestError(
                    f"{name} is not valid UTF-8 text (check the terminal's or file's encoding)"
                )
        if self.prompt.count("{}") != 1:
            raise RequestError(
                "prompt must contain exactly one '{}' where the subject goes, e.g. "
                f"'{{}} is located in'; got {self.prompt!r}"
            )
        if "{" in self.prompt.replace("{}", "") or "}" in self.prompt.replace("{}", ""):
            raise RequestError(
                f"prompt may contain no braces besides one '{{}}', got {self.prompt!r}"
            )
        if self.target_true is not None and not self.target_true.strip():
            object.__setattr__(self, "target_true", None)
        # Space required for correct tokenisation (ROME's ft_main.py): the target continues
        # the prompt as a new word.
        object.__setattr__(self, "target_new", _leading_space(self.target_new))
        if self.target_true is not None:
            object.__setattr__(self, "target_true", _leading_space(self.target_true))
        if self.target_true is not None and self.target_true.strip() == self.target_new.strip():
            raise RequestError("target_new equals target_true: there is nothing to rewrite")
        object.__setattr__(self, "prompt", self.prompt.rstrip())

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    @property
    def head(self) -> str:
        """The prompt up to and with its subject ("The Eiffel Tower" of "The {} is in")."""
        return self.prompt[: self.prompt.index("{}")] + self.subject

    def check_length(self, tok, max_tokens: int = MAX_TOKENS) -> None:
        """Raise if prompt + target would not fit ``max_tokens`` tokens."""
        chars = len(self.text) + len(self.target_new)
        if chars > 64 * max_tokens:  # far past any limit: not worth tokenizing (a 1 MB import)
            raise RequestError(
                f"prompt + target_new is {chars:,} characters; the limit is {max_tokens} "
                "tokens: shorten them"
            )
        n = len(tok(self.text + self.target_new, add_special_tokens=False)["input_ids"])
        if n > max_tokens:
            raise RequestError(
                f"prompt + target_new is {n} tokens; the limit is {max_tokens}: shorten them"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EditRequest:
        known = {"prompt", "subject", "target_new", "target_true"}
        if not isinstance(d, dict) or not {"prompt", "subject", "target_new"} <= set(d):
            raise RequestError(f"a request needs prompt, subject and target_new; got {_short(d)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_counterfact(cls, record: dict) -> EditRequest:
        """Build from a CounterFact record (``requested_rewrite``)."""
        try:
            rw = record["requested_rewrite"]
            return cls(
                prompt=rw["prompt"],
                subject=rw["subject"],
                target_new=rw["target_new"]["str"],
                target_true=rw["target_true"]["str"],
            )
        except (KeyError, TypeError) as e:
            raise RequestError(f"not a CounterFact record: missing {e}") from None

    @classmethod
    def from_zsre(cls, record: dict) -> EditRequest:
        """Build from a zsRE record, ROME/MEMIT convention: target_new = answers[0]."""
        try:
            src, subject = record["src"], record["subject"]
            target = record["answers"][0]
        except (KeyError, IndexError, TypeError) as e:
            raise RequestError(f"not a zsRE record: missing {e}") from None
        if subject not in src:
            raise RequestError(f"zsRE subject {subject!r} does not occur in question {src!r}")
        prompt = src.replace("{", "").replace("}", "").replace(subject, "{}", 1)
        return cls(prompt=prompt, subject=subject, target_new=target)


def _utf8(s: str) -> bool:
    """False for lone surrogates (non-UTF-8 argv bytes arrive as surrogate escapes)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}... ({len(str(value)):,} characters)"


def check_prompt_length(tok, prompt: str, max_tokens: int = MAX_TOKENS) -> None:
    """Refuse a prompt to complete that is longer than an edit's prompt may be (``/generate``
    and ``ftedit generate``): a long prompt would hold the model for everyone."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("the prompt is empty: type text to complete, e.g. 'The Eiffel Tower is'")
    if not _utf8(prompt):
        raise RequestError("the prompt is not valid UTF-8 text (check the terminal's encoding)")
    if len(prompt) > 64 * max_tokens:  # never worth tokenizing: far past any limit
        raise RequestError(
            f"the prompt is {len(prompt):,} characters; the limit is {max_tokens} tokens "
            "(as for an edit's prompt): shorten it"
        )
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    if n > max_tokens:
        raise RequestError(
            f"the prompt is {n} tokens; the limit is {max_tokens} (as for an edit's prompt): "
            "shorten it"
        )


def _leading_space(s: str) -> str:
    return s if s.startswith(" ") else " " + s
