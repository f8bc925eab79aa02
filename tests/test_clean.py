"""Tests for workbench.clean: each rule on tiny hand-made rows, then preview/apply properties."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import clean as C
from workbench.exceptions import ConfigError, WorkbenchError
from workbench.schema import DROP_COLUMNS, Example, content_id, examples_frame, to_example

MB_TEXT = ("All work and no play makes a dull day. " * 27_000)[:1_000_000] + "End."


def chat(*turns: str, system: str | None = None) -> list[dict]:
    """Alternate user/assistant turns, starting with the user."""
    msgs = [{"role": "system", "content": system}] if system else []
    roles = ("user", "assistant")
    return msgs + [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def frame(*convs: list[dict], metas: list[dict] | None = None) -> pd.DataFrame:
    metas = metas or [{} for _ in convs]
    return examples_frame([Example(tuple(c), m) for c, m in zip(convs, metas)])


def qa(answer: str, question: str = "Tell me something.") -> list[dict]:
    return chat(question, answer)


def hits(rule: C.Rule, *texts: str) -> list[bool]:
    return [d is not None for d in rule.check(list(texts))]


def fixed(rule: C.Rule, text: str) -> str | None:
    out = rule.fix([text])[0]
    return None if out is None else out[0]


# --- configs -----------------------------------------------------------------------------

@pytest.mark.parametrize("make, field", [
    (lambda: C.Placeholder(roles=("bot",)), "Placeholder.roles"),
    (lambda: C.Placeholder(roles=()), "Placeholder.roles"),
    (lambda: C.TooShort(min_length=-1), "TooShort.min_length"),
    (lambda: C.TooLong(max_length=0), "TooLong.max_length"),
    (lambda: C.TooShort(unit="tokens"), "TooShort.count_tokens"),
    (lambda: C.TooShort(unit="words"), "TooShort.unit"),
    (lambda: C.TooLong(count_tokens=len), "TooLong.unit"),
    (lambda: C.TooLong(scope="row"), "TooLong.scope"),
    (lambda: C.Normalize(form="NFD"), "Normalize.form"),
    (lambda: C.PII(mode="mask"), "PII.mode"),
    (lambda: C.PII(kinds=("ssn",)), "PII.kinds"),
    (lambda: C.Language(allowed=("xx",)), "Language.allowed"),
    (lambda: C.Language(allowed=("en",), candidates=("fr", "de")), "Language.candidates"),
    (lambda: C.Language(min_confidence=1.5), "Language.min_confidence"),
    (lambda: C.Repetition(top_ngram_frac=((2, 1.5),)), "Repetition.top_ngram_frac"),
    (lambda: C.Repetition(dup_line_frac=-0.1), "Repetition.dup_line_frac"),
    (lambda: C.Contamination(eval_texts=["a b"], eval_ids=["1", "2"]), "Contamination.eval_ids"),
    (lambda: C.Contamination(eval_texts=["a"], n=5, short_n=8), "Contamination.n"),
    (lambda: C.Placeholder(values="n/a"), "Placeholder.values"),
    (lambda: C.Placeholder(mode="review"), "Placeholder.mode"),
    (lambda: C.Normalize(mode="flag"), "Normalize.mode"),
    (lambda: C.PlaceholderInput(mode="drop_all"), "PlaceholderInput.mode"),
])
def test_bad_config_names_the_field(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()


def test_configs_accept_lists_and_serialise():
    rule = C.Placeholder(roles=["assistant", "user"], values=["N/A"])
    assert rule.roles == ("assistant", "user") and rule.values == ("n/a",)
    assert issubclass(ConfigError, WorkbenchError)
    for r in C.default_rules() + [C.Language(), C.Contamination(eval_texts=["x"] * 3),
                                  C.TooShort(unit="tokens", count_tokens=lambda t: [1] * len(t))]:
        params = json.loads(json.dumps(r.params()))
        assert params["rule"] == r.name


def test_rule_names_are_stable():
    names = [r.name for r in C.default_rules()]
    assert names == ["normalize", "pii", "placeholder", "placeholder_input", "too_short",
                     "too_long", "refusal", "missing_context", "url_input", "truncated",
                     "repetition"]
    assert C.Language.name == "language" and C.Contamination.name == "contamination"


# --- normalize -----------------------------------------------------------------------------

def test_normalize_repairs_mojibake_keeps_curly_quotes():
    assert fixed(C.Normalize(), "The Mona Lisa doesnâ€™t have eyebrows.") == \
        "The Mona Lisa doesn’t have eyebrows."


def test_normalize_nfc_and_whitespace():
    assert fixed(C.Normalize(), "Cafe\u0301") == "Café"
    messy = "\n\n  a  \r\nb\n\n\n\nc\u00a0d\u200be\x07  "
    assert fixed(C.Normalize(), messy) == "  a\nb\n\nc de"
    assert C.Normalize().fix([messy])[0][1] == "normalized whitespace"


@pytest.mark.parametrize("text", [
    "Clean ASCII text.", "中文，测试。", "שלום\u200f עולם", "Family: 👨\u200d👩\u200d👧",
    "    def f():\n        return 1", "Tabs\tstay", "", "مرحبا بالعالم",
])
def test_normalize_leaves_good_text_alone(text):
    assert C.Normalize().fix([text]) == [None]


@pytest.mark.parametrize("text", ["doesnâ€™t  \n\n\n x", "0ß\x1f¢", "a\r\n\u00a0b\u200b"])
def test_normalize_is_idempotent(text):
    once = fixed(C.Normalize(), text)
    assert once is not None and C.Normalize().fix([once]) == [None]


def test_normalize_can_be_limited():
    assert fixed(C.Normalize(mojibake=False), "doesnâ€™t") is None
    assert fixed(C.Normalize(form="NFKC"), "ﬁne") == "fine"


# --- placeholder ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   \n", "N/A", "<noinput>", "<No output>", "TODO", "none",
                                  "None.", "...", "…", "[n/a]", "NaN"])
def test_placeholder_drops(text):
    assert hits(C.Placeholder(), text) == [True]


@pytest.mark.parametrize("text", ["No", "4", "None of the above is true.", "TODO list: milk",
                                  "N/A means not applicable.", "🙂", MB_TEXT])
def test_placeholder_keeps(text):
    assert hits(C.Placeholder(), text) == [False]


def test_placeholder_custom_values_and_detail():
    assert hits(C.Placeholder(values=("tbd", "<answer>")), "<Answer>", "none") == [True, False]
    assert C.Placeholder().check(["N/A"])[0] == "placeholder 'N/A'"
    assert C.Placeholder().check([" "])[0] == "empty"


@pytest.mark.parametrize("text", [
    "<nooutput> This type of instruction cannot be fulfilled by a GPT model.",
    "<noinput>\nOutput:\nI will remember the appointment.", "< No Output >",
    "<No output. The task requires a poster, not text.>", "No input required.",
])
def test_placeholder_drops_a_leading_tag_and_wordy_placeholders(text):
    assert hits(C.Placeholder(), text) == [True]


@pytest.mark.parametrize("text", [":-)", ";)", "<3", "^_^", "<html>\n<body>Hi</body>\n</html>",
                                  '<img src="a.png" alt="Three circles.">', "<b>None</b> left."])
def test_placeholder_keeps_emoticons_and_markup(text):
    assert hits(C.Placeholder(), text) == [False]


def test_placeholder_leading_tag_detail():
    detail = C.Placeholder().check(["<nooutput> This type of instruction cannot be done."])[0]
    assert detail == "starts with placeholder '<nooutput>'"


# --- the input part of a prompt ------------------------------------------------------------

def alpaca(instruction: str, inp: str, output: str = "Sure.") -> pd.DataFrame:
    example = to_example({"instruction": instruction, "input": inp, "output": output}, "alpaca")
    return examples_frame([example])


def rule_hits(rule: C.Rule, f: pd.DataFrame) -> list[str | None]:
    return [None if h is None else h.detail for h in
            rule.scan([list(m) for m in f["messages"]], f["metadata"].tolist())]


@pytest.mark.parametrize("inp", ["No input", "Noinput", "<noinput>", "N/A", "(noinput)",
                                 "[No Input]", "No input required.", '"<noinput>"', "< noinput >",
                                 "`<noinput>`", "<noinput> Output:"])
def test_placeholder_input_drops_alpaca_placeholder_inputs(inp):
    detail = rule_hits(C.PlaceholderInput(), alpaca("Write a poem about the sea.", inp))[0]
    assert detail is not None and detail.startswith("turn 1 (user): input ")


@pytest.mark.parametrize("inp", ["..-. --- -.-. .... .", "*\n**\n***", "Apple, Banana, Lemon",
                                 "None of the options above is correct: A, B or C?", "NA12878"])
def test_placeholder_input_keeps_real_inputs(inp):
    assert rule_hits(C.PlaceholderInput(), alpaca("Decode or continue this.", inp)) == [None]


def test_placeholder_input_reads_a_last_paragraph_outside_alpaca():
    rule = C.PlaceholderInput()
    f = frame(qa("Sure.", "Write a poem.\n\nN/A"), qa("Sure.", "N/A"),
              qa("Sure.", "Write a poem.\n\nAbout the sea."), qa("Sure.", "Write a poem."))
    assert rule_hits(rule, f) == ["turn 1 (user): input placeholder 'N/A'", None, None, None]
    # The apply path, with the Alpaca row's input found through its metadata.
    dropped = C.apply(alpaca("Summarize the text.", "No input"), [rule]).dropped
    assert dropped["reason"].tolist() == ["placeholder_input"]
    assert C.prompt_input("Write a poem.\n\nN/A") == "N/A" and C.prompt_input("Hi.") == ""


@pytest.mark.parametrize("inp", ["https://www.bbc.com/news/world-51461830", "www.amazon.com",
                                 "Website URL: http://example.com", "<https://example.com/a.pdf>",
                                 "Image: https://tinyurl.com/yag4jdyg"])
def test_url_input_hits_inputs_that_are_only_a_link(inp):
    detail = rule_hits(C.UrlInput(), alpaca("Summarize the following article.", inp))[0]
    assert detail is not None and "is only a link" in detail


@pytest.mark.parametrize("prompt, inp", [
    ("Summarize the following article.", "The article says: see https://example.com for more."),
    ("Summarize https://example.com/article in three sentences.", ""),
    ("Extract the domain.", "The link is https://docs.example.com/a"),
])
def test_url_input_keeps_links_inside_text(prompt, inp):
    f = alpaca(prompt, inp) if inp else frame(qa("Sure.", prompt))
    assert rule_hits(C.UrlInput(), f) == [None]


# --- length --------------------------------------------------------------------------------

def test_too_short_in_chars_ignores_outer_space():
    assert hits(C.TooShort(), "4", " 4 ", "42", "") == [True, True, False, True]
    assert hits(C.TooShort(min_length=5), "four", "five!") == [True, False]


@pytest.mark.parametrize("prompt, answer", [
    ("What is the result of 12/3?", "4"),
    ("Output 1 for a breach and 0 for no breach.\n\nUsing a school laptop at home", "1"),
    ("Find the median of the given list.\n\n9, 2, 7", "7"),
    ("Assign a letter grade for the given test score\n\n89", "B"),
    ("Which is a mammal?\n(A) shark (B) whale", "B"),
    ("Pick an emoji that best describes the mood.\n\nExcited", "😆"),
])
def test_too_short_keeps_a_one_character_answer_to_its_question(prompt, answer):
    f = frame(qa(answer, prompt))
    assert len(C.apply(f, [C.TooShort()]).dropped) == 0
    assert len(C.apply(f, [C.TooShort(short_answers=False)]).dropped) == 1


@pytest.mark.parametrize("prompt, answer", [
    ("Write a poem about the sea.", "a"), ("Tell me about Paris.", "7"),
    ("What is 2+2?", "x"), ("Describe your day.", "😆"), ("How many legs has a cat?", "."),
])
def test_too_short_drops_one_character_that_does_not_answer(prompt, answer):
    assert C.apply(frame(qa(answer, prompt)), [C.TooShort()]).dropped["reason"].tolist() == \
        ["too_short"]


def test_too_long_turn_and_conversation_scope():
    f = frame(chat("123456", "abcdef"))
    assert C.apply(f, [C.TooLong(max_length=10)]).dropped["reason"].tolist() == ["too_long"]
    assert len(C.apply(f, [C.TooLong(max_length=10, scope="turn")]).dropped) == 0
    assert "conversation: 12 chars > 10" in C.preview(f, [C.TooLong(max_length=10)]) \
        .rules[0].samples[0]["detail"]


def test_token_counter_callable_is_batched():
    calls = []

    def count(texts: list[str]) -> list[int]:
        calls.append(len(texts))
        return [len(t.split()) for t in texts]

    rule = C.TooShort(min_length=3, unit="tokens", count_tokens=count, roles=("user", "assistant"))
    f = frame(*[qa("one two three", "a b c d")] * 600, qa("one two"))
    result = C.apply(f, [rule])
    assert result.dropped["detail"].tolist() == ["turn 2 (assistant): 2 tokens < 3"]
    assert calls == [512, 512, 178]


def test_hf_tokenizer_counts_without_special_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", bos_token="[UNK]")
    assert C.count_tokens(["hello world", "hello", ""], hf) == [2, 1, 0]
    assert C.count_tokens(["hello world again"], raw) == [3]
    assert hits(C.TooLong(max_length=2, unit="tokens", count_tokens=hf), "hello world x") == [True]


def test_bad_token_counter_is_a_config_error():
    rule = C.TooShort(unit="tokens", count_tokens=lambda texts: [1])
    with pytest.raises(ConfigError, match="count_tokens"):
        rule.check(["a", "b"])


# --- language ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Le chat est assis sur le tapis et regarde les oiseaux dans le jardin.",
    "Der Hund spielt jeden Morgen mit dem roten Ball im großen Garten.",
    "今天天气很好，我们一起去公园散步吧，顺便买一些水果回家。",
    "القطة تجلس على السجادة وتنظر إلى الطيور في الحديقة كل صباح",
    "Кошка сидит на ковре и смотрит на птиц в саду каждое утро.",
])
def test_language_drops_other_languages(text):
    assert hits(C.Language(), text) == [True]


@pytest.mark.parametrize("text", [
    "The cat sits on the mat and watches the birds in the garden.",
    "Oui.", "🙂🙂🙂", "", "```python\nfor x in range(10):\n    print(x)\n```",
    "Hello world, this is English text with a few 中文 characters mixed in it.",
    "Dandelion: Taraxacum officinale\nChrysanthemum: Chrysanthemum morifolium",
])
def test_language_keeps_english_short_and_code(text):
    assert hits(C.Language(), text) == [False]


def test_language_script_and_non_latin_allowed():
    russian = "Кошка сидит на ковре и смотрит на птиц в саду каждое утро."
    assert "not in the Latin script" in C.Language().check([russian])[0]
    english = "The cat sits on the mat and watches the birds in the garden."
    assert hits(C.Language(allowed=("ru", "uk", "bg")), russian, english) == [False, True]


def test_language_allowed_set_and_detail():
    french = "Le chat est assis sur le tapis et regarde les oiseaux dans le jardin."
    assert hits(C.Language(allowed=("en", "fr")), french) == [False]
    assert C.Language().check([french])[0].startswith("language 'fr' (p=")


def test_batched_language_id_matches_py3langid():
    texts = ["The cat sits on the mat.", "Le chat est assis.", "Der Hund spielt.", "x" * 3000,
             "今天天气很好", "ПРИВЕТ МИР КАК ДЕЛА", "a", "12345 !!!", "Ελληνικά κείμενα εδώ"]
    lid = C._identifier(None)
    for text, (lang, prob) in zip(texts, C._classify(lid, texts)):
        ref_lang, ref_prob = lid.ident.classify(text)
        if lang != "und":  # "und": no features at all, where py3langid guesses uniformly
            assert (lang, round(prob, 3)) == (ref_lang, round(float(ref_prob), 3))


# --- PII -----------------------------------------------------------------------------------

def redacted(text: str, **options) -> str:
    out = C.PII(**options).fix([text])[0]
    return text if out is None else out[0]


@pytest.mark.parametrize("text, expected", [
    ("Mail jane.doe@gmail.com today", "Mail [EMAIL] today"),
    ("Call me at (415) 555-2671.", "Call me at [PHONE]."),
    ("Ring 415-555-2671 or 415.555.2671", "Ring [PHONE] or [PHONE]"),
    ("London office: +44 20 7946 0958", "London office: [PHONE]"),
    ("Phone: 020 7946 0958", "Phone: [PHONE]"),
    ("Card 4111 1111 1111 1111 expires", "Card [CREDIT_CARD] expires"),
    ("Amex 378282246310005.", "Amex [CREDIT_CARD]."),
    ("Server at 93.184.216.34 is down", "Server at [IP_ADDRESS] is down"),
    ("Use 2001:4860:4860::8888 for DNS", "Use [IP_ADDRESS] for DNS"),
    ("key sk-proj-Ab3dEf9hIj2kLm5nOp8qRs1tUv4wXy7z", "key [SECRET]"),
    ("AWS AKIAIOSFODNN7EXAMPLE here", "AWS [SECRET] here"),
    ("token ghp_" + "aB3" * 12 + " ok", "token [SECRET] ok"),
    ("slack xoxb-1234-5678-abcdefghij", "slack [SECRET]"),
    ('api_key = "a8f5f167f44f4964e6c998dee827110c"', 'api_key = "[SECRET]"'),
    ("SECRET_TOKEN: Zx9Qw2Lm7Rt5Yp3Kd8Vn", "SECRET_TOKEN: [SECRET]"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----\nbye",
     "[SECRET]\nbye"),
    ("Write to bob42@mail.co.uk or 5551234567@sms.net", "Write to [EMAIL] or [EMAIL]"),
])
def test_pii_redacts_with_typed_placeholders(text, expected):
    assert redacted(text) == expected


@pytest.mark.parametrize("text", [
    "Upgrade to Python 3.11.4 or version 10.0.0.1 of the tool.",
    "The meeting is on 2023-01-15 or 15/01/2023 at 12:30:45.",
    "Order #123-456-7890 shipped; order number 4111111111111111 too.",
    "ISBN 978-3-16-148410-0 costs $1,234,567.89 or 3.14159265358979.",
    "Card-like 4111 1111 1111 1112 fails Luhn; so does 0000 0000 0000 0000.",
    "Timestamp 1700000000123 and 16 digits 1234567812345678.",
    "Router 192.168.1.1, loopback 127.0.0.1, docs 203.0.113.5, link fe80::1.",
    "Use std::vector and a::b in C++.",
    "Ask user@example.com or admin@mail.example.org.",
    "pip install scikit-learn; see sk-learn-tutorial-part-two-2023.",
    "max_tokens = 2048 and token = get_token() and password = 'password'.",
    "The key insight is that secrets stay secret.",
    "Call 911 now.",
    "مرحبا 👋 שלום",
])
def test_pii_leaves_lookalikes_alone(text):
    assert C.PII().spans(text) == []


@pytest.mark.parametrize("text", ["(123) 456-7890", "123-456-7890", "(123)-456-7890",
                                  "Phone: (123) 456-7890", "123.456.7890"])
def test_pii_redacts_every_written_form_of_a_phone_number(text):
    assert redacted(text).endswith("[PHONE]")


def test_luhn():
    assert C.luhn_valid("4111 1111 1111 1111") and C.luhn_valid("79927398713")
    assert not C.luhn_valid("4111 1111 1111 1112") and not C.luhn_valid("")


def test_pii_options_drop_mode_and_kinds():
    assert redacted("Docs at 203.0.113.5", public_ips_only=False) == "Docs at [IP_ADDRESS]"
    assert redacted("a@gmail.com 415-555-2671", kinds=("phone",)) == "a@gmail.com [PHONE]"
    drop = C.PII(mode="drop")
    assert drop.action == "drop"
    assert drop.check(["x a@gmail.com 415-555-2671"]) == ["contains 1 EMAIL, 1 PHONE"]


def test_pii_redaction_is_idempotent_and_fast_on_big_text():
    text = "Mail a@gmail.com, call (415) 555-2671, key sk-Ab3dEf9hIj2kLm5nOp8qRs1t. " * 3
    once = redacted(text)
    assert redacted(once) == once and "[EMAIL]" in once and "[SECRET]" in once
    assert C.PII().spans(MB_TEXT) == []


# --- refusal -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "As an AI language model, I cannot browse the internet.",
    "I'm sorry, but I cannot help with that request.",
    "I cannot fulfill this request.",
    "Sorry, I can't assist with that.",
    "I am just an AI and do not have feelings.",
    "Here is the answer. As an AI, I have no opinions on this.",
    "This task cannot be completed by a language model.",
    "I apologize, but I'm unable to provide that information.",
])
def test_refusal_drops(text):
    assert hits(C.Refusal(), text) == [True]


@pytest.mark.parametrize("text", [
    "Dear Sam,\n\nI'm sorry, but I cannot attend your party.",
    "Sorry, I won't be able to make it to the meeting.",
    "As an AI researcher, I study neural networks.",
    "The AI model was trained as a language model on web text.",
    "I cannot wait to see you!",
    "",
])
def test_refusal_keeps(text):
    assert hits(C.Refusal(), text) == [False]


# --- missing context -----------------------------------------------------------------------

@pytest.mark.parametrize("prompt", [
    "Describe the image above.",
    "Generate a funny caption for the following photo.",
    "What animals are in this photo?",
    "Summarize the following article.",
    "See the attached file and fix the bug.",
    "Click the link below and summarize the page.",
    "Translate the following sentence into Spanish",
])
def test_missing_context_drops(prompt):
    assert C.apply(frame(qa("Sure.", prompt)), [C.MissingContext()]).dropped["reason"].tolist() \
        == ["missing_context"]


@pytest.mark.parametrize("prompt, meta", [
    ("Describe the image above.\nhttps://example.com/cat.png", {}),
    ("Describe the image above.", {"image": "cat.png"}),
    ("Summarize the following article:\n\nThe article says many things.", {}),
    ("Translate the following sentence into French: Hello there.", {}),
    ("Evaluate the following statement \"The world is better now.\"", {}),
    ("Given a string, write code that reverses the given string.", {}),
    ("Categorize this.\n\nThe following article is about crowdfunding.", {}),
    ("In the following weeks, I want to learn French.", {}),
    ("Write a story about a photographer.", {}),
])
def test_missing_context_keeps(prompt, meta):
    assert len(C.apply(frame(qa("Sure.", prompt), metas=[meta]), [C.MissingContext()]).dropped) == 0


@pytest.mark.parametrize("prompt", [
    "Summarize the article below in 5 sentences.\n\nThe COVID-19 crisis changed the way we "
    "work: working from home became the norm for many people.",
    "Given the table below, classify each sentence.\n\n|Sentence|\n|--|\n|Apples are fruit.|",
])
def test_missing_context_keeps_text_below_that_is_in_the_row(prompt):
    assert len(C.apply(frame(qa("Sure.", prompt)), [C.MissingContext()]).dropped) == 0
    instruction, inp = prompt.split("\n\n", 1)
    assert len(C.apply(alpaca(instruction, inp), [C.MissingContext()]).dropped) == 0


@pytest.mark.parametrize("text", [
    "Summarize the article below in 5 sentences.",
    "Thanks! I've listed the settings in the table below, so copy them.\n\n— Northwind Support",
    "Please follow the steps in the article linked below; it covers every platform and plan.\n\n"
    "Let us know if anything in it is unclear and we will gladly help you further.",
])
def test_missing_context_still_drops_text_below_that_is_absent(text):
    assert len(C.apply(frame(qa("Sure.", text)), [C.MissingContext()]).dropped) == 1


def test_missing_context_answers_about_images_in_general_and_video_games():
    general = qa("A classifier finds the objects in the image and labels them.",
                 "How does object detection work?")
    game = qa("The level design in this video game was excellent.", "Review a video game.")
    assert len(C.apply(frame(general, game), [C.MissingContext()]).dropped) == 0
    asked = qa("A cat.", "What animal is in the photo?")
    assert len(C.apply(frame(asked), [C.MissingContext()]).dropped) == 1


def test_missing_context_multi_turn_and_roles():
    conv = chat("Here is my essay: Cats are great pets.", "Nice essay.",
                "Summarize the text above.", "Cats are good.")
    assert len(C.apply(frame(conv), [C.MissingContext()]).dropped) == 0
    said = qa("As you can see in the image above, the cat is asleep.", "Describe my cat.")
    assert len(C.apply(frame(said), [C.MissingContext(roles=("user",))]).dropped) == 0
    dropped = C.apply(frame(said), [C.MissingContext()]).dropped  # assistants are checked too
    assert dropped["detail"].iloc[0].startswith("turn 2 (assistant): refers to 'the image above'")


# --- repetition ----------------------------------------------------------------------------

PROSE = ("Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and "
         "oxygen. The process happens in chloroplasts, which hold the green pigment chlorophyll. "
         "Light reactions split water and store energy in ATP, while the Calvin cycle uses that "
         "energy to fix carbon. Without it, most life on Earth would lack food and breathable "
         "air, so scientists study it to improve crops and design artificial solar fuels.")


def test_repetition_keeps_ordinary_prose_and_short_answers():
    assert hits(C.Repetition(), PROSE, "New York, New York", "") == [False, False, False]
    assert hits(C.Repetition(min_words=0), "New York, New York") == [True]


ORDINARY = ("Two advantages of using relational databases are that they are organized and "
            "easy to query, and that they are easily shared among different users. Two "
            "disadvantages of using relational databases are that they can be hard to scale, "
            "and that query performance can suffer when more data is added to the tables.")
SONG = ("Verse 1:\nSunny days and open skies,\nLaughter drifting through the air.\n\n"
        "Chorus:\nLet's all seize the summertime,\nGonna have a real good time.\n\n"
        "Verse 2:\nSandy toes and salty hair,\nEvery evening warm and bright.\n\n"
        "Chorus:\nLet's all seize the summertime,\nGonna have a real good time.\n\n"
        "Bridge:\nWhen the autumn comes along,\nWe will still remember this song.")


def test_repetition_keeps_ordinary_paragraphs_and_refrains():
    assert hits(C.Repetition(), ORDINARY, SONG) == [False, False]
    # Gopher's web-page limits call both repetitive: this is what dropped real Alpaca rows.
    gopher = C.Repetition(top_ngram_frac=C.GOPHER_TOP_NGRAMS, dup_ngram_frac=C.GOPHER_DUP_NGRAMS,
                          dup_line_frac=0.3, dup_para_frac=0.3, dup_line_char_frac=0.2,
                          dup_para_char_frac=0.2)
    assert gopher.check([ORDINARY, SONG]) == ["top_4_gram 0.189 > 0.16", "dup_6_gram 0.166 > 0.14"]
    # The same paragraph said three times in one run is a loop, found by the n-grams.
    assert C.Repetition().check([" ".join([ORDINARY] * 3)]) == ["dup_5_gram 0.579 > 0.5"]


def test_repetition_detail_has_three_digits():
    detail = C.Repetition().check(["\n\n".join([PROSE] * 3)])[0]
    assert detail == "dup_para_frac 0.667 > 0.5"


@pytest.mark.parametrize("text, stat", [
    ("\n".join(["Buy our product today."] * 6 + [PROSE]), "dup_line"),
    ("\n\n".join([PROSE] * 3), "dup_para_frac"),
    ("buy now " * 60, "top_2_gram"),
    (PROSE + " " + " ".join(["the quick brown fox jumps over"] * 25), "gram"),
])
def test_repetition_drops(text, stat):
    detail = C.Repetition().check([text])[0]
    assert detail is not None and stat in detail


def test_repetition_stats_follow_gopher():
    stats = C.repetition_stats("a\na\nb\nb")
    assert stats["dup_line_frac"] == 0.5 and stats["dup_line_char_frac"] == 2 / 7
    text = "a b c d e a b c d e"
    assert C.repetition_stats(text)["dup_5_gram"] == 5 / len(text)
    assert C.repetition_stats("one two three")["top_2_gram"] == 0.0  # seen once: no repetition


# --- truncated -----------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Here is the code:\n```python\nprint('hi')\n",
    "The capital of France is Paris, and the capital of Germany is",
    "There are many reasons for this (for example the weather and",
    "Plants need water, light and nutrients to grow well in the spring and summer,",
    "Sales rose every year. A linear regression predicts that sales in the next year will "
    "keep rising across the whole region and well beyond it",
    "Steps to follow:\n1. Mix the flour.\n\nThen we will add the",
])
def test_truncated_drops(text):
    assert hits(C.Truncated(), text) == [True]


@pytest.mark.parametrize("text", [
    "Paris.", "Hello world", "Yes", "The Great Gatsby", "4", "", "   ",
    "- item one\n- item two", "```python\nprint(1)\n```", "x = compute(1, 2)",
    '"Design is how it works" - Steve Jobs', "What a great day! 🎉",
    "Thanks for reading #blessed", "今天天气很好。", "Sincerely,", "I agree to that",
    "| a | b |\n| 1 | 2 |", "Renewable Energy Sources Are the Future of the United States",
    "It is raining\nso we stay in",
])
def test_truncated_keeps(text):
    assert hits(C.Truncated(), text) == [False]


# --- contamination -------------------------------------------------------------------------

EVAL = ["What is the boiling point of water at sea level in degrees Celsius and why does it "
        "change with altitude?", "Name the capital city of France in one word please"]


def test_contamination_long_and_short_ngrams():
    rule = C.Contamination(eval_texts=EVAL, eval_ids=["q1", "q2"])
    leak = ("Question: WHAT is the boiling point of water at sea-level, in degrees Celsius, "
            "and why?")
    safe = ("Tell me: what is the boiling point of water at sea level in degrees Fahrenheit, "
            "and what is the melting point of iron in Kelvin?")  # shares a 12-gram only
    short = "Quick quiz: name the capital city of France in one word please, thanks."
    details = rule.check([leak, safe, short])
    assert "eval row 0 (q1)" in details[0] and details[0].startswith("shares 13-gram")
    assert details[1] is None
    assert details[2].startswith("shares 8-gram") and "eval row 1 (q2)" in details[2]


def test_contamination_configurable_n_and_roles():
    rule = C.Contamination(eval_texts=["alpha beta gamma delta"], n=4, short_n=3,
                           roles=("assistant",))
    f = frame(qa("nothing here", "alpha beta gamma delta"), qa("x alpha beta gamma delta y"))
    result = C.apply(f, [rule])
    assert result.dropped["row_key"].tolist() == [1]
    assert result.dropped["detail"].iloc[0].startswith("turn 2 (assistant): shares 4-gram")


# --- preview and apply ---------------------------------------------------------------------

def sample_frame() -> pd.DataFrame:
    return frame(
        qa("Paris is the capital of France."),
        qa("N/A"),
        qa("As an AI language model, I cannot do that."),
        chat("Hi", "Hello!", "My email is jane@gmail.com", "Noted."),
        qa("Sure, here:\n```python\nprint(1)\n"),
        qa("ok  \n\n\n\nfine."),
        qa("x", "What is 2+2? Also mail bob@gmail.com"),
        qa("Describe it.", "Describe the image above."),
        qa("The sea is wide.", "Write a poem about the sea.\n\nNo input"),
    )


def dropping(rules: list[C.Rule]) -> list[C.Rule]:
    """The same rules with every drop-or-flag rule in drop mode."""
    return [r if r.action == "change" else dataclasses.replace(r, mode="drop") for r in rules]


def test_apply_reasons_details_and_counts():
    f = sample_frame()
    result = C.apply(f, dropping(C.default_rules()))
    assert len(result.kept) + len(result.dropped) == len(f)
    assert list(result.dropped.columns) == list(DROP_COLUMNS)
    assert dict(zip(result.dropped["row_key"], result.dropped["reason"])) == {
        1: "placeholder", 2: "refusal", 4: "truncated", 6: "too_short", 7: "missing_context",
        8: "placeholder_input"}
    assert result.dropped["duplicate_of"].isna().all()
    assert result.kept["row_key"].tolist() == [0, 3, 5]
    assert result.flagged.empty
    changed = result.changed.set_index("row_key")
    assert changed.loc[3, "reason"] == "pii"
    assert changed.loc[3, "detail"] == "turn 3 (user): redacted 1 EMAIL"
    assert 6 not in changed.index  # changed and then dropped: reported as dropped only


def test_apply_rewrites_messages_and_derived_columns():
    f = sample_frame()
    before = f.copy(deep=True)
    kept = C.apply(f, dropping(C.default_rules())).kept.set_index("row_key")
    assert kept.loc[3, "messages"][2]["content"] == "My email is [EMAIL]"
    assert kept.loc[5, "response"] == "ok\n\nfine."
    assert kept.loc[5, "id"] == content_id(kept.loc[5, "messages"])
    assert kept.loc[0, "id"] == f.loc[0, "id"]
    pd.testing.assert_frame_equal(f, before)  # the input is never mutated


def test_first_dropping_rule_is_the_reason():
    f = frame(qa("As an AI language model, I think that the"))
    assert C.apply(f, [C.Refusal(), C.Truncated()]).dropped["reason"].tolist() == ["refusal"]
    assert C.apply(f, [C.Truncated(), C.Refusal()]).dropped["reason"].tolist() == ["truncated"]


def test_role_selection_and_turn_detail():
    f = frame(chat("I cannot fulfill this request.", "Fine, here you go."))
    assert len(C.apply(f, [C.Refusal()]).dropped) == 0
    detail = C.apply(f, [C.Refusal(roles=("user",))]).dropped["detail"].iloc[0]
    assert detail.startswith("turn 1 (user): refusal")
    multi = frame(chat("Hi", "Hello!", "And?", "I'm sorry, but I cannot help."))
    assert C.apply(multi, [C.Refusal()]).dropped["detail"].iloc[0].startswith("turn 4 (assistant)")


def test_preview_counts_match_apply():
    f = sample_frame()
    rules = C.default_rules()
    report = C.preview(f, rules, samples=2)
    result = C.apply(f, rules)
    assert report.total_rows == len(f) and report.dropped_rows == len(result.dropped)
    assert report.flagged_rows == result.flagged["row_key"].nunique()
    for rule, rr in zip(rules, report.rules):
        single = C.apply(f, [rule])
        count = {"drop": len(single.dropped), "flag": single.flagged["row_key"].nunique(),
                 "change": single.changed["row_key"].nunique()}[rule.action]
        assert rr.rows == count and rr.name == rule.name and len(rr.samples) <= 2
        assert rr.action == rule.action and len(rr.row_keys) == rr.rows
    assert report.to_frame()["rows"].tolist() == [r.rows for r in report.rules]


def test_one_scan_gives_the_preview_and_what_rule_after_rule_keeps():
    f = sample_frame()
    rules = dropping(C.default_rules())
    calls = []
    checked = C.run(f, rules, samples=2, progress=lambda *a: calls.append(a))
    assert calls == [(i, len(rules), r.name) for i, r in enumerate(rules, 1)]
    assert checked.preview == C.preview(f, rules, samples=2)
    left, reasons = f, {}
    for rule in rules:  # the reference: each rule on the rows the earlier ones left
        step = C.apply(left, [rule])
        left = step.kept
        reasons.update(zip(step.dropped["row_key"], step.dropped["reason"]))
    assert checked.result.kept["row_key"].tolist() == left["row_key"].tolist()
    assert checked.result.kept["messages"].tolist() == left["messages"].tolist()
    assert dict(zip(checked.result.dropped["row_key"], checked.result.dropped["reason"])) == reasons


def test_flag_mode_keeps_rows_and_lists_them_for_review():
    f = frame(qa("N/A"), qa("Paris is the capital of France."), qa("As an AI language model, no."))
    result = C.apply(f, [C.Placeholder(mode="flag"), C.Refusal(mode="flag")])
    assert result.kept["row_key"].tolist() == [0, 1, 2] and result.dropped.empty
    assert list(result.flagged.columns) == ["row_key", "reason", "detail"]
    assert result.flagged.values.tolist() == [
        [0, "placeholder", "turn 2 (assistant): placeholder 'N/A'"],
        [2, "refusal", "turn 2 (assistant): refusal 'As an AI language model'"]]
    assert C.Placeholder(mode="flag").params()["mode"] == "flag"


def test_flag_mode_in_preview_and_a_later_drop_wins():
    f = frame(qa("N/A"), qa("x", "Tell me something."), qa("Fine, thanks."))
    rules = [C.Placeholder(mode="flag"), C.TooShort(min_length=4)]
    report = C.preview(f, rules)
    assert [(r.name, r.action, r.rows, r.row_keys) for r in report.rules] == [
        ("placeholder", "flag", 1, [0]), ("too_short", "drop", 2, [0, 1])]
    assert report.dropped_rows == 2 and report.flagged_rows == 0
    assert report.to_frame()["action"].tolist() == ["flag", "drop"]
    result = C.apply(f, rules)
    # Flagged and then dropped: reported as dropped only, like a change.
    assert result.dropped["row_key"].tolist() == [0, 1] and result.flagged.empty
    only_flags = C.preview(f, [C.Placeholder(mode="flag"), C.TooShort(min_length=4, mode="flag")])
    assert only_flags.dropped_rows == 0 and only_flags.flagged_rows == 2


def test_pii_can_flag_and_modes_decide_the_action():
    assert C.PII(mode="flag").action == "flag" and C.PII().action == "change"
    assert C.Normalize().action == "change" and C.Refusal().action == "drop"
    result = C.apply(frame(qa("Mail jane@gmail.com")), [C.PII(mode="flag")])
    assert result.flagged["detail"].tolist() == ["turn 2 (assistant): contains 1 EMAIL"]
    assert result.kept["response"].tolist() == ["Mail jane@gmail.com"]


def test_default_rules_drop_only_placeholder_inputs():
    modes = {r.name: r.action for r in C.default_rules()}
    assert [n for n, a in modes.items() if a == "drop"] == ["placeholder_input"]
    assert modes["normalize"] == modes["pii"] == "change"
    f = sample_frame()
    result = C.apply(f, C.default_rules())
    assert dict(zip(result.dropped["row_key"], result.dropped["reason"])) == {
        8: "placeholder_input"}
    first = result.flagged.drop_duplicates("row_key").set_index("row_key")["reason"].to_dict()
    assert first == {1: "placeholder", 2: "refusal", 4: "truncated", 6: "too_short",
                     7: "missing_context"}


def test_preview_counts_a_row_under_every_rule_and_shows_before_after():
    f = frame(qa("N/A"), qa("Mail bob@gmail.com now  "))
    report = C.preview(f, [C.Placeholder(), C.TooShort(min_length=4), C.PII()])
    assert [r.rows for r in report.rules] == [1, 1, 1] and report.dropped_rows == 1
    sample = report.rules[2].samples[0]
    assert sample["before"] == "Mail bob@gmail.com now  "
    assert sample["after"] == "Mail [EMAIL] now  "
    assert report.rules[0].samples[0]["after"] is None


def test_empty_frame_and_bad_inputs():
    empty = frame()
    result = C.apply(empty, C.default_rules())
    assert len(result.kept) == 0 and list(result.dropped.columns) == list(DROP_COLUMNS)
    assert C.preview(empty, C.default_rules()).dropped_rows == 0
    with pytest.raises(ConfigError, match="row_key"):
        C.apply(pd.DataFrame({"messages": []}), [])
    with pytest.raises(ConfigError, match=r"rules\[0\]"):
        C.apply(sample_frame(), ["placeholder"])
    with pytest.raises(ConfigError, match="frame: expected a pandas DataFrame"):
        C.preview([{"messages": []}], [])
    with pytest.raises(ConfigError, match="samples"):
        C.preview(sample_frame(), [], samples=-1)


def test_adversarial_rows_survive_all_rules():
    f = frame(qa(MB_TEXT), qa("   "), qa("🙂🙃" * 50), qa("مرحبا بالعالم، كيف حالك اليوم؟"),
              qa("```js\nconsole.log('hi')\n```"), qa("ab\u0000cd" * 3),
              chat("Hi", "Hello!", system="Be brief."))
    rules = C.default_rules() + [C.Language(allowed=("en", "ar")),
                                 C.Contamination(eval_texts=[MB_TEXT[:500]])]
    result = C.apply(f, rules)
    assert len(result.kept) + len(result.dropped) == len(f)
    flagged = result.flagged
    assert "placeholder" in flagged.loc[flagged["row_key"] == 1, "reason"].tolist()


PATHOLOGICAL = ["\n" * 200_000 + "an ai", "x" + " " * 200_000 + "x", "a-" * 100_000 + "key=a1",
                "a." * 100_000 + "key", "@" + "a" * 200_000, "1 " * 100_000, "(" * 200_000,
                "```" * 70_000, "!" * 200_000 + " as an AI", ";\n" * 100_000,
                "the following " * 15_000, "sk-" + "aB1" * 70_000]


def test_no_quadratic_blowup_on_pathological_text():
    import time

    rules = C.default_rules() + [C.Language(), C.Contamination(eval_texts=EVAL), C.PII(mode="drop")]
    start = time.perf_counter()
    result = C.apply(frame(*[qa(t, t) for t in PATHOLOGICAL]), rules)
    # Quadratic regex backtracking on 200k characters would take minutes, not seconds.
    assert time.perf_counter() - start < 20
    assert len(result.kept) + len(result.dropped) == len(PATHOLOGICAL)


# --- properties ----------------------------------------------------------------------------

FRAGMENTS = ["N/A", "", "   ", "As an AI language model, I cannot help.", "jane@gmail.com",
             "(415) 555-2671", "4111 1111 1111 1111", "8.8.8.8", "version 1.2.3",
             "Describe the image above.", "```python\nprint(1)", "```", "the end of the",
             "Le chat est assis sur le tapis dans le jardin.", "buy now " * 30, "🙂", "שלום",
             "Paris is the capital of France.", "\n\n", "doesnâ€™t", "e\u0301", "  ", ",",
             "What is the boiling point of water at sea level in degrees Celsius"]
TEXTS = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=30)), max_size=4) \
    .map(" ".join)
CONVS = st.lists(st.tuples(TEXTS, TEXTS), min_size=1, max_size=2) \
    .map(lambda pairs: chat(*[t for pair in pairs for t in pair]))
# The defaults (mostly flags), then the same rules dropping: a flagged row may be dropped later.
PROPERTY_RULES = (C.default_rules() + [C.Language(), C.Contamination(eval_texts=EVAL)]
                  + dropping(C.default_rules()[2:]))
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(st.lists(CONVS, max_size=8), st.integers(0, 8))
def test_properties_of_apply(convs, cut):
    f = frame(*convs)
    f["row_key"] = [10 * k + 3 for k in range(len(f))]
    result = C.apply(f, PROPERTY_RULES)
    kept, dropped = set(result.kept["row_key"]), set(result.dropped["row_key"])
    assert len(result.kept) + len(result.dropped) == len(f) and not kept & dropped
    assert kept | dropped == set(f["row_key"])
    assert result.kept["row_key"].tolist() == [k for k in f["row_key"] if k in kept]
    assert C.preview(f, PROPERTY_RULES).dropped_rows == len(result.dropped)
    again = C.apply(result.kept, PROPERTY_RULES)
    assert len(again.dropped) == 0 and len(again.changed) == 0  # a second pass is a no-op
    parts = [C.apply(f.iloc[:cut], PROPERTY_RULES), C.apply(f.iloc[cut:], PROPERTY_RULES)]
    pd.testing.assert_frame_equal(pd.concat([p.kept for p in parts], ignore_index=True),
                                  result.kept, check_dtype=False)
    pd.testing.assert_frame_equal(pd.concat([p.dropped for p in parts], ignore_index=True),
                                  result.dropped, check_dtype=False)
    pd.testing.assert_frame_equal(pd.concat([p.flagged for p in parts], ignore_index=True),
                                  result.flagged, check_dtype=False)


def test_refusal_without_an_apology_at_the_start():
    from workbench.clean import refusal_match

    assert refusal_match("I'm not able to help with that. Is there anything else?")
    assert refusal_match("I am unable to assist with this request.")
    assert refusal_match("I'm not able to log in to my account since Monday.") is None


@pytest.mark.parametrize("text", [
    "I can't open it. (screen recording attached)",
    "I attached a screenshot of the error.",
    "Details are in the PDF I attached.",
    "The full log is pasted below.",
    "Please follow the steps in the article linked below; it covers every platform.",
])
def test_missing_context_attachment_claims(text):
    assert len(C.apply(frame(qa("Sure, let me check.", text)), [C.MissingContext()]).dropped) == 1


def test_missing_context_claim_backed_by_a_block_or_url():
    block = "The full log is pasted below:\nERROR 42 at sync.c:10"
    assert len(C.apply(frame(qa("Thanks.", block)), [C.MissingContext()]).dropped) == 0
    url = "I attached a screenshot: https://example.org/shot.png"
    assert len(C.apply(frame(qa("Thanks.", url)), [C.MissingContext()]).dropped) == 0


@pytest.mark.parametrize("text,cut", [
    ("Do this.\n\n1. Open Settings.\n2. Click Sign out next to", True),
    ("Do this.\n\n1. Open Settings.\n2. Add a working card", True),
    ("No way to reset it. The one way back is the recovery", True),
    ("Steps:\n1. Open Settings\n2. Click Save", False),
    ("Here is the answer. It works fine now.", False),
])
def test_truncated_list_items_and_short_last_sentences(text, cut):
    assert (C.truncation_reason(text) is not None) == cut


def test_rows_followed_in_chunks_give_the_same_run(monkeypatch):
    f = pd.concat([sample_frame()] * 7, ignore_index=True).assign(row_key=range(63))
    rules = C.default_rules() + [C.Language(), C.Contamination(eval_texts=EVAL,
                                                               eval_ids=["q1", "q2"])]
    whole = C.run(f, rules, samples=3)
    assert whole.preview.dropped_rows and whole.preview.flagged_rows  # the rules hit rows
    monkeypatch.setattr(C, "ROW_CHUNK", 5)  # 13 chunks of 5 rows per rule
    calls = []
    chunked = C.run(f, rules, samples=3, row_progress=lambda *a: calls.append(a))
    assert chunked.preview == whole.preview
    for part in ("kept", "dropped", "changed", "flagged"):
        pd.testing.assert_frame_equal(getattr(chunked.result, part), getattr(whole.result, part))
    total = len(f) * len(rules)
    assert [c[1] for c in calls] == [total] * len(calls)
    done = [c[0] for c in calls]
    assert done == sorted(done) and done[-1] == total and len(calls) == 13 * len(rules)
    assert calls[0][2] == f"rule 1/{len(rules)} · {rules[0].name}"
    assert calls[-1][2] == f"rule {len(rules)}/{len(rules)} · contamination"
