"""The tokens section's logic: the visitor's text split by the offline WordPiece (MiniLM) and byte-level BPE
(SmolLM2) tokenizers, the checks on the text, the chat template's tokens, and the HTML and table views."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from spaces.inside import tokens
from spaces.inside.models import load_tokenizer

WORDPIECE = "local:all-minilm-l6-v2"
BPE = "local:smollm2-135m-instruct"
EMOJI = "😀"  # not in MiniLM's vocabulary: [UNK]; four UTF-8 bytes for byte-level BPE


class SpanTexts(HTMLParser):
    """The text inside each token span of a fragment, as a browser would show it."""

    def __init__(self):
        super().__init__()
        self.texts: list[str] = []
        self.inside = False

    def handle_starttag(self, tag, attrs):
        self.inside = tag == "span" and "data-token-id" in dict(attrs)
        if self.inside:
            self.texts.append("")

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.texts[-1] += data


@pytest.fixture(scope="module")
def wordpiece():
    return load_tokenizer(WORDPIECE)


@pytest.fixture(scope="module")
def bpe():
    return load_tokenizer(BPE)


def test_wordpiece_splits_a_long_word_into_pieces_and_flags_its_specials(wordpiece):
    result = tokens.tokenize(wordpiece, "antidisestablishmentarianism is long")
    assert result.kind == "WordPiece"
    assert [t.text for t in result.tokens][0] == "[CLS]" and result.tokens[-1].text == "[SEP]"
    assert [t.special for t in result.tokens] == [True] + [False] * (len(result.tokens) - 2) + [True]
    assert result.tokens[0].start is None and result.tokens[0].word is None
    word, pieces = result.per_word[0]
    assert word == "antidisestablishmentarianism" and len(pieces) > 2
    pieces_text = [t.text for t in result.tokens if t.word == 0]
    assert pieces_text[0] == "anti" and all(p.startswith("##") for p in pieces_text[1:])
    assert pieces == [p.removeprefix("##") for p in pieces_text]  # shown without the continuation mark
    assert result.count == len(result.tokens) - 2 and result.specials == 2
    assert result.vocab_size == len(wordpiece) and result.context == 512


def test_the_comparison_counts_tokens_per_word_for_each_tokenizer():
    text = "antidisestablishmentarianism is long"
    comparison = tokens.compare([WORDPIECE, BPE], text)
    first, second = comparison.tokenizations
    assert (first.kind, second.kind) == ("WordPiece", "byte-level BPE")
    assert first.count != second.count
    assert [w.text for w in comparison.words] == ["antidisestablishmentarianism", "is", "long"]
    assert comparison.counts[0] == [len(first.per_word[0][1]), len(second.per_word[0][1])]
    assert comparison.counts[0][0] != comparison.counts[0][1] and comparison.counts[1] == [1, 1]
    headers, rows = comparison.words_table()
    assert headers == ["word", WORDPIECE, BPE]
    assert rows[0] == ["antidisestablishmentarianism", *comparison.counts[0]]
    assert rows[-1] == ["tokens per word", round(first.count / 3, 2), round(second.count / 3, 2)]
    assert comparison.tokens_per_word[BPE] == pytest.approx(second.count / 3)


@pytest.mark.parametrize("label", [WORDPIECE, BPE])
def test_offsets_point_back_at_the_text(label):
    text = "Offsets map every token back to the visitor's words, don't they?"
    result = tokens.tokenize(label, text)
    visitor = [t for t in result.tokens if not t.special]
    assert all(t.source == text[t.start:t.end] for t in visitor)
    assert [t.start for t in visitor] == sorted(t.start for t in visitor)
    joined = "".join(text[t.start:t.end] for t in visitor)
    assert joined.replace(" ", "") == text.replace(" ", "")
    for token in visitor:
        if token.word is not None:
            word = result.words[token.word]
            assert token.start < word.end and token.end > word.start


def test_an_unknown_character_is_flagged_for_wordpiece_and_is_bytes_for_bpe(wordpiece, bpe):
    text = f"smile {EMOJI} please"
    unknown = tokens.tokenize(wordpiece, text)
    flagged = [t for t in unknown.tokens if t.unknown]
    assert len(flagged) == 1 and unknown.unknown == 1
    assert flagged[0].text == "[UNK]" and flagged[0].id == wordpiece.unk_token_id
    assert flagged[0].source == EMOJI and flagged[0].shown == EMOJI and not flagged[0].special
    assert any("no piece for" in note and EMOJI in note for note in unknown.notes)

    as_bytes = tokens.tokenize(bpe, text)
    assert as_bytes.unknown == 0
    emoji_tokens = [t for t in as_bytes.tokens if t.word == 1]
    assert len(emoji_tokens) > 1
    assert "".join(t.shown for t in emoji_tokens) == "␣<0xF0><0x9F><0x98><0x80>"


def test_the_chat_template_marks_its_own_tokens(bpe):
    text = "a helpful AI"  # also in SmolLM2's system prompt: the visitor's text must be found in its own place
    result = tokens.tokenize(bpe, text, chat_template=True)
    assert result.chat_template
    visitor = [t for t in result.tokens if not t.template]
    assert [t.source for t in visitor] == ["a", " helpful", " AI"]
    assert [t.shown for t in visitor] == ["a", "␣helpful", "␣AI"]
    assert result.tokens[visitor[0].index - 1].text == "Ċ"  # right after "user\n"
    assert all(t.start is not None and not t.special for t in visitor)
    template = [t for t in result.tokens if t.template]
    assert template and all(t.start is None and t.word is None for t in template)
    assert {"<|im_start|>", "<|im_end|>"} <= {t.text for t in template if t.special}
    assert result.count == 3 and result.template_tokens == len(result.tokens) - 3
    assert result.tokens[-1].template  # the generation prompt comes after the message


def test_a_tokenizer_without_a_chat_template_says_so(wordpiece):
    result = tokens.tokenize(wordpiece, "hello there", chat_template=True)
    assert not result.chat_template and result.template_tokens == 0
    assert result.notes == [f"{tokens._label_of(wordpiece)} has no chat template: the text is tokenized as it is."]
    assert [t.text for t in result.tokens] == ["[CLS]", "hello", "there", "[SEP]"]


@pytest.mark.parametrize("text, rule", [("", "empty"), ("   \n\t ", "only whitespace"), (None, "empty")])
def test_check_text_refuses_empty_text(text, rule):
    with pytest.raises(ValueError, match=rule):
        tokens.check_text(text)


def test_check_text_refuses_text_over_the_limit():
    with pytest.raises(ValueError, match=f"{tokens.MAX_CHARACTERS + 1:,} characters.*limit is "
                                         f"{tokens.MAX_CHARACTERS:,}"):
        tokens.check_text("a" * (tokens.MAX_CHARACTERS + 1))
    assert tokens.check_text("a" * tokens.MAX_CHARACTERS) == ("a" * tokens.MAX_CHARACTERS, [])


def test_check_text_names_control_and_invisible_characters():
    text, notes = tokens.check_text("ring\x07 zero\u200bwidth\ufeff line\nand tab\t")
    assert text == "ring\x07 zero\u200bwidth\ufeff line\nand tab\t"
    assert len(notes) == 2
    assert notes[0].startswith("The text has 1 control character (U+0007 BELL at position 4)") and "␇" in notes[0]
    assert "2 invisible format characters" in notes[1]
    assert "U+200B ZERO WIDTH SPACE at position 10" in notes[1] and "U+FEFF" in notes[1]


def test_check_text_notes_odd_unicode_and_replaces_lone_surrogates():
    _, notes = tokens.check_text("cafe\u0301 \ue000 \u0378")
    assert any("not in Unicode NFC form" in note for note in notes)
    assert any("private-use" in note and "U+E000" in note for note in notes)
    assert any("unassigned" in note and "U+0378" in note for note in notes)
    text, notes = tokens.check_text("bad \ud800 half")
    assert text == "bad \ufffd half" and "lone surrogate" in notes[0]
    assert tokens.tokenize(BPE, "bad \ud800 half").count > 0  # now encodable


def test_text_over_the_context_is_noted(wordpiece):
    result = tokens.tokenize(wordpiece, "word " * 600)
    assert result.over_context and result.context == 512 and result.total == 602
    assert any("more than its context of 512" in note for note in result.notes)
    assert 'token-beyond' in tokens.tokens_html(result)


def test_control_characters_show_visibly_in_bpe_tokens(bpe):
    result = tokens.tokenize(bpe, "bell\x07 here")
    assert "␇" in [t.shown for t in result.tokens]


def test_tokens_html_escapes_the_text_and_has_one_span_per_token():
    result = tokens.tokenize(BPE, "<script>alert('x')</script> & more")
    fragment = tokens.tokens_html(result)
    assert "<script" not in fragment and "&lt;" in fragment and "&gt;" in fragment and "&amp;" in fragment
    assert fragment.count("data-token-id=") == len(result.tokens) == fragment.count("<span")
    spans = SpanTexts()
    spans.feed(fragment)
    assert spans.texts == [t.shown for t in result.tokens]  # what the browser shows is exactly the pieces
    assert 'class="token-view"' in fragment
    assert f"{result.count} tokens · {result.specials} special" in fragment
    assert "vocabulary 49,152" in fragment


def test_ids_table_rows(wordpiece):
    result = tokens.tokenize(wordpiece, f"hi {EMOJI}")
    rows = tokens.ids_table(result)
    assert len(rows[0]) == len(tokens.IDS_HEADERS)
    assert rows[0] == [0, 101, "[CLS]", "[CLS]", None, None, None, "special"]
    assert rows[1][1:] == [wordpiece.convert_tokens_to_ids("hi"), "hi", "hi", 0, 2, "hi", ""]
    assert rows[2][2:] == ["[UNK]", EMOJI, 3, 4, EMOJI, "unknown"]


@pytest.mark.parametrize("labels", [[], [WORDPIECE, BPE, "a", "b", "c"]])
def test_compare_refuses_too_few_or_too_many_tokenizers(labels):
    with pytest.raises(ValueError, match=f"between {tokens.MIN_TOKENIZERS} and {tokens.MAX_TOKENIZERS}"):
        tokens.compare(labels, "some text")


def test_compare_refuses_an_unknown_label_and_bad_text():
    with pytest.raises(ValueError):
        tokens.compare(["local:no-such-tokenizer"], "some text")
    with pytest.raises(ValueError, match="empty"):
        tokens.compare([WORDPIECE], "")


def test_compare_gathers_the_notes_of_text_and_tokenizers():
    comparison = tokens.compare([WORDPIECE, BPE], f"bell\x07 {EMOJI}", chat_template=True)
    assert comparison.notes[0].startswith("The text has 1 control character")
    assert any(note.startswith(f"{WORDPIECE} has no chat template") for note in comparison.notes)
    assert any(note.startswith(f"{WORDPIECE} has no piece for") for note in comparison.notes)
    assert any(note.startswith(f"{WORDPIECE} drops 1 character") for note in comparison.notes)
