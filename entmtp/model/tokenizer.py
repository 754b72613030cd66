"""Tokenizer of a Hugging Face model folder, without transformers.

Reads tokenizer.json with the `tokenizers` library and tokenizer_config.json
(special tokens, add_bos_token, chat template; chat_template.jinja wins when
present). Chat templates render with jinja2 in a sandbox configured the way
transformers renders them (trim_blocks, lstrip_blocks, loopcontrols,
raise_exception, a non-ASCII-escaping tojson), so prompts match
`apply_chat_template` character for character.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Iterable, Optional

from entmtp.errors import EntmtpError
from entmtp.jsonfile import read_json

_SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


class Tokenizer:
    """Encode/decode text and render chat prompts for one model folder."""

    def __init__(self, backend, config: dict, chat_template: Optional[str], source: str = "tokenizer"):
        self._tok = backend  # tokenizers.Tokenizer
        self._config = config
        self._source = source
        self.chat_template = chat_template
        self.add_bos_token = bool(config.get("add_bos_token", False))
        # Special token strings by name (None when the config names none).
        self.special_tokens: dict[str, Optional[str]] = {
            name: _token_content(config.get(name)) for name in _SPECIAL_NAMES}
        self.bos_token_id = self._special_id("bos_token")
        self.eos_token_id = self._special_id("eos_token")
        self.pad_token_id = self._special_id("pad_token")
        self.unk_token_id = self._special_id("unk_token")
        self._compiled_template = None

    @classmethod
    def from_folder(cls, path: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend

        folder = Path(path)
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise EntmtpError(f"model folder {folder} has no tokenizer.json")
        try:
            backend = Backend.from_file(str(tok_file))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EntmtpError(f"{tok_file}: not a valid tokenizer.json ({first})") from None
        config: dict = {}
        cfg_file = folder / "tokenizer_config.json"
        if cfg_file.is_file():
            config = _read_json(cfg_file)
        template = None
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            try:
                template = jinja_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise EntmtpError(f"{jinja_file}: cannot read ({exc})") from None
        else:
            template = _pick_template(config.get("chat_template"), cfg_file)
        return cls(backend, config, template, source=str(folder))

    # ------------------------------------------------------------ encode/decode

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the model may pad beyond it)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> Optional[str]:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; BOS is prepended only if the config's add_bos_token is true.

        Special-token strings in the text (e.g. "<|im_start|>") become their ids.
        The tokenizer.json post-processor is not applied: which specials to add is
        decided here, from the config, as the brief of this project requires.
        """
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if self.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream_decoder(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------ chat

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """Render `messages` ([{"role": ..., "content": ...}, ...]) as prompt text."""
        if self.chat_template is None:
            raise EntmtpError(f"{self._source}: the tokenizer has no chat template")
        if self._compiled_template is None:
            self._compiled_template = _compile_template(self.chat_template, self._source)
        variables = {name: value for name, value in self.special_tokens.items() if value is not None}
        variables.update(extra)
        try:
            return self._compiled_template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        except _TemplateRaised as exc:
            raise EntmtpError(f"chat template refused the conversation: {exc}") from None
        except Exception as exc:  # jinja2 errors of any kind in a user-supplied template
            raise EntmtpError(f"{self._source}: chat template failed: "
                              f"{type(exc).__name__}: {exc}") from None

    def encode_chat(self, user_text: str, system: Optional[str] = None) -> list[int]:
        """Ids of a one-turn chat prompt ending with the assistant generation prompt.

        No BOS is added here: templates that want one write it themselves, and
        transformers' apply_chat_template(tokenize=True) adds none either.
        """
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        messages.append({"role": "user", "content": user_text})
        text = self.apply_chat_template(messages, add_generation_prompt=True)
        return self._tok.encode(text, add_special_tokens=False).ids

    def _special_id(self, name: str) -> Optional[int]:
        token = self.special_tokens.get(name)
        return None if token is None else self._tok.token_to_id(token)


class StreamDecoder:
    """Incremental detokenizer: push ids one at a time, get text as it completes.

    Decoding each id alone would split multi-byte UTF-8 characters (an emoji is
    often 2-4 byte-level tokens) and lose context-dependent spaces (SentencePiece
    decoders strip a leading space per decode call). So this keeps a small window
    of ids: `prefix` is where the last emitted decode began, `read` is where it
    ended; new text = decode(ids[prefix:]) minus decode(ids[prefix:read]). Text
    ending in U+FFFD (an unfinished character) is held back until it completes.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        done = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if text.endswith("\ufffd") or len(text) <= len(done):
            return ""
        # Drop ids that will never be needed again (keep the last emitted window).
        new = text[len(done):]
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > 64:
            del self._ids[:self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return new

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character decodes as U+FFFD)."""
        done = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        self._ids, self._prefix, self._read = [], 0, 0
        return text[len(done):]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip) if ids else ""


# ---------------------------------------------------------------- helpers


class _TemplateRaised(Exception):
    """raise_exception() called from inside a chat template."""


def _read_json(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise EntmtpError(f"{path}: expected a JSON object")
    return data


def _token_content(value: Any) -> Optional[str]:
    """A special token in tokenizer_config.json is a string or a serialized AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick_template(value: Any, source: Path) -> Optional[str]:
    """chat_template is a string, or a list of {"name", "template"} (use "default")."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if "default" in named:
            return named["default"]
    raise EntmtpError(f"{source}: chat_template has an unsupported form (no default template)")


def _compile_template(source_text: str, where: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise _TemplateRaised(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source_text)
    except jinja2.TemplateSyntaxError as exc:
        raise EntmtpError(f"{where}: chat template has a syntax error on line {exc.lineno}: "
                          f"{exc.message}") from None
