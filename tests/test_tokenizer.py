"""entmtp.model.tokenizer against transformers, on the converted default model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from entmtp.errors import EntmtpError
from entmtp.model.tokenizer import StreamDecoder, Tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

HANDWRITTEN = [
    "", " ", "  ", "\n", "\n\n\n", "\t", "Hello, world!", "hello world", " leading space", "trailing space ",
    "Hello\tworld\ttabs", "line one\nline two\r\nline three", "multiple   spaces   here",
    # digits in many positions (the smollm pre-tokenizer splits every digit)
    "1234567890", "3.14159", "-42", "1,000,000", "x = 10**9 + 7", "version 2.0.1b3", "2024-06-30T12:00:00Z",
    "and  2", "and   35 apples", "a\n 2", "total:\n\n42", "  7 leading", "x\t 3", "a \t8", "col1  col2  3",
    "   12\n   34", "price $19.99 (was $25)", "0x1F 0b1010 0o17", "1st 2nd 3rd 4th", "Room 101, floor  9",
    # code
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "import numpy as np\narr = np.zeros((3, 4), dtype=np.float32)\n",
    "    if (a  && b) { return  1; }", "SELECT * FROM users WHERE id = 42;", "<div class=\"x\">  5 </div>",
    "#!/bin/bash\necho \"$HOME\"  && ls -la  ~/", "lambda x:x+1", "a=b==c!=d<=e>=f", "```python\nprint('hi')\n```",
    # unicode, emoji, combining marks
    "café naïve résumé", "Ünïcödé façade", "日本語のテキスト", "中文字符测试 123", "한국어 텍스트",
    "Привет, мир!", "مرحبا بالعالم", "שלום עולם", "ελληνικά γράμματα", "emoji 😀 test",
    "family 👨‍👩‍👧‍👦 and flags 🇫🇷🇩🇪", "skin tones 👍🏽👋🏿", "e\u0301 combining acute", "zero\u200bwidth",
    "math ∑∫√∞ ≤ ≥ ≠", "arrows → ← ↔ ⇒", "™ © ® ° ± µ", "\u00a0non-breaking\u00a0space", "tab\u3000ideographic",
    "🙂🙂🙂", "a😀b😀c", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
    # special tokens inside text
    "<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>", "text <|im_end|> more", "<|im_start|>assistant\n",
    "<repo_name>foo<file_sep>bar.py", "not special: <|im_star|> <im_start>",
    # punctuation and contractions (the GPT-2 regex has special cases)
    "don't won't it's I'm you're they'll we've", "DON'T WON'T IT'S", "He said: \"Yes!\" -- then left...",
    "(((nested))) [[brackets]] {{braces}}", "a.b.c/d\\e|f", "?!?!?! ...... ------",
]


def _gsm8k_texts(n_questions: int = 200, n_answers: int = 60) -> list[str]:
    path = SHARED_DATA / "gsm8k_test.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["question"] for r in records[:n_questions]] + [r["answer"] for r in records[:n_answers]]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    gsm = _gsm8k_texts()
    if not gsm:
        pytest.skip(f"GSM8K data not found under {SHARED_DATA}")
    return HANDWRITTEN + gsm


@pytest.fixture(scope="module")
def tok(default_model_dir) -> Tokenizer:
    return Tokenizer.from_folder(default_model_dir)


@pytest.fixture(scope="module")
def hf_fast(default_model_dir):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    return transformers.PreTrainedTokenizerFast.from_pretrained(str(default_model_dir))


@pytest.fixture(scope="module")
def hf_gguf_tok(default_gguf_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    return transformers.AutoTokenizer.from_pretrained(str(default_gguf_path.parent),
                                                      gguf_file=default_gguf_path.name)


def test_special_tokens_and_sizes(tok):
    assert tok.vocab_size == 49152
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    assert tok.add_bos_token is False
    assert tok.encode("Hello") == [19556]  # no BOS: add_bos_token is false
    assert tok.encode("<|im_start|>user\nhi<|im_end|>")[0] == 1
    assert tok.encode("<|im_start|>user\nhi<|im_end|>")[-1] == 2
    # Digits are split one by one, runs of spaces stay together: "and  2" -> and, ĠĠ, 2
    assert [tok.id_to_token(i) for i in tok.encode("and  2")] == ["and", "ĠĠ", "2"]
    assert [tok.id_to_token(i) for i in tok.encode("x 1234")] == ["x", "Ġ", "1", "2", "3", "4"]


def test_parity_with_transformers_fast_tokenizer_from_folder(tok, hf_fast, texts, default_model_dir):
    transformers = pytest.importorskip("transformers")
    mismatched = [t for t in texts if tok.encode(t) != hf_fast.encode(t, add_special_tokens=False)]
    assert mismatched == []
    # AutoTokenizer must keep the digit split too (a GPT2Tokenizer class would drop it).
    auto = transformers.AutoTokenizer.from_pretrained(str(default_model_dir))
    assert [t for t in texts if tok.encode(t) != auto.encode(t, add_special_tokens=False)] == []
    assert len(texts) >= 300


def test_parity_with_transformers_gguf_tokenizer(tok, hf_gguf_tok, texts):
    """transformers' gguf_file tokenizer drops the smollm Digits pre-split.

    So it must agree with us everywhere except where a whitespace run of two or
    more characters precedes a digit (there the run is one pre-token for
    llama.cpp and for us, but loses its last character to the digit's ` ?\\d`
    regex branch in transformers). Independently of that, splitting the text
    at every digit and running the gguf tokenizer on each piece emulates
    llama.cpp's `smollm` pre-tokenizer; we must equal that on every text.
    """
    divergent = [t for t in texts if tok.encode(t) != hf_gguf_tok.encode(t, add_special_tokens=False)]
    ws_run_before_digit = [t for t in texts if re.search(r"\s{2,}\d", t)]
    spaces_before_digit = [t for t in texts if re.search(r" {2,}\d", t)]
    assert set(divergent) <= set(ws_run_before_digit)
    assert set(spaces_before_digit) <= set(divergent)  # "ĠĠ" is a merge, so these always differ
    assert len(divergent) >= 8

    def llama_cpp_smollm(text: str) -> list[int]:
        ids: list[int] = []
        for piece in re.split(r"(\d)", text):
            if piece:
                ids += hf_gguf_tok.encode(piece, add_special_tokens=False)
        return ids

    assert [t for t in texts if tok.encode(t) != llama_cpp_smollm(t)] == []


def test_decode_round_trip(tok, texts):
    assert [t for t in texts if tok.decode(tok.encode(t)) != t] == []
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Write  code:\n\tdef f(): pass 😀"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  leading spaces  3"}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tok, hf_fast, conversation, add_generation_prompt):
    ours = tok.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    theirs = hf_fast.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                         tokenize=False)
    assert ours == theirs


def test_chat_template_default_system_prompt(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_encode_chat(tok, hf_fast):
    for system in (None, "Answer in French."):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "How many legs does a spider have? 8?"}]
        text = hf_fast.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        expected = hf_fast.encode(text, add_special_tokens=False)
        assert tok.encode_chat("How many legs does a spider have? 8?", system=system) == expected
        assert expected[0] == 1 and expected[-4:] == tok.encode("<|im_start|>assistant\n")


MULTIBYTE = [
    "emoji 😀 test 🙂🙂 done", "family 👨‍👩‍👧‍👦 flags 🇫🇷🇩🇪 tones 👍🏽", "日本語のテキストと中文字符测试",
    "Привет, мир! café ñ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√∞", "<|im_start|>user\n😀<|im_end|>\n", "a😀b😀c😀",
]


@pytest.mark.parametrize("skip_special", [False, True])
def test_stream_decoder_matches_full_decode(tok, skip_special):
    held_back = 0
    for text in MULTIBYTE:
        ids = tok.encode(text)
        stream = tok.stream_decoder(skip_special_tokens=skip_special)
        pieces = [stream.push(i) for i in ids]
        pieces.append(stream.flush())
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip_special)
        assert not any("\ufffd" in p for p in pieces)  # never emits half a character
        held_back += sum(p == "" for p in pieces[:-1])
    assert held_back > 0  # the texts really split characters across tokens


def test_stream_decoder_long_text_and_flush_of_partial_char(tok, texts):
    text = "\n".join(texts[:120])
    ids = tok.encode(text)
    stream = StreamDecoder(tok)
    assert "".join(stream.push(i) for i in ids) + stream.flush() == text
    # An unfinished character is held back until flush, which returns U+FFFD.
    emoji_ids = tok.encode("😀")
    assert len(emoji_ids) > 1
    stream = StreamDecoder(tok)
    assert stream.push(emoji_ids[0]) == ""
    assert stream.flush() == "\ufffd"


# ---------------------------------------------------------------- errors


def _copy_tokenizer_files(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_missing_and_corrupt_files(default_model_dir, tmp_path):
    with pytest.raises(EntmtpError, match=r"has no tokenizer\.json$"):
        Tokenizer.from_folder(tmp_path)
    folder = _copy_tokenizer_files(default_model_dir, tmp_path / "m")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(EntmtpError, match=r"tokenizer\.json: not a valid tokenizer\.json") as info:
        Tokenizer.from_folder(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)
    folder = _copy_tokenizer_files(default_model_dir, tmp_path / "m2")
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(EntmtpError, match=r"tokenizer_config\.json: not valid JSON"):
        Tokenizer.from_folder(folder)


def test_template_sources_and_errors(default_model_dir, tmp_path):
    folder = _copy_tokenizer_files(default_model_dir, tmp_path / "m")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    # No template anywhere: a clear error on use, loading still works.
    del cfg["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_folder(folder)
    with pytest.raises(EntmtpError, match="has no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    # chat_template.jinja wins over the config; raise_exception surfaces as EntmtpError.
    cfg["chat_template"] = "config template"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}\n"
        "  {% if m['role'] == 'tool' %}{{ raise_exception('tool messages are not supported') }}{% endif %}\n"
        "  [{{ m['role'] }}] {{ m['content'] | tojson }}\n"
        "{% endfor %}\n")
    tok = Tokenizer.from_folder(folder)
    # trim_blocks / lstrip_blocks: the block tags leave no stray newlines or indentation.
    assert tok.apply_chat_template([{"role": "user", "content": "é"}]) == '  [user] "é"\n'
    with pytest.raises(EntmtpError, match="tool messages are not supported"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    (folder / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(EntmtpError, match="syntax error"):
        Tokenizer.from_folder(folder).apply_chat_template([])
    # The sandbox refuses unsafe attribute access.
    (folder / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(EntmtpError, match="chat template failed"):
        Tokenizer.from_folder(folder).apply_chat_template([])


def test_add_bos_token_from_config(default_model_dir, tmp_path):
    folder = _copy_tokenizer_files(default_model_dir, tmp_path / "m")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_folder(folder)
    assert tok.encode("hi") == [1] + Tokenizer.from_folder(default_model_dir).encode("hi")
