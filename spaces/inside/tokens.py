"""Tokens: the visitor's text split by two or more tokenizers side by side (the page's first section).

    comparison = compare(default_tokenizers(), "Tokenization isn't magic 😀")
    for tokenization in comparison.tokenizations:
        html = tokens_html(tokenization)      # coloured tokens, a header line of counts
        rows = ids_table(tokenization)        # rows for a table under IDS_HEADERS
    headers, rows = comparison.words_table()  # tokens per word, one column per tokenizer
    comparison.notes                          # warnings for the visitor (control characters, no chat template...)

One tokenizer alone: `tokenize("local:smollm2-135m-instruct", text, chat_template=True)`, or pass a loaded
(fast) tokenizer instead of a label. Text is checked first by `check_text`: empty, whitespace-only and text over
MAX_CHARACTERS is refused with a ValueError (refused, not cut, so counts always describe the whole text);
control characters and odd Unicode pass with a note naming them.

What a token shows (`Token.shown`): the characters the piece stands for, decoded from the vocabulary's spelling
('Ġthe' -> '␣the', '##ing' -> 'ing', '▁the' -> '␣the'). Spaces show as '␣', newlines '↵', tabs '⇥', other control
characters as their Unicode control picture ('\\x07' -> '␇'), invisible and unassigned code points as '<U+200B>'.
A byte-level BPE piece holding part of a character's UTF-8 bytes shows those bytes as '<0xF0><0x9F>'. An unknown
token ([UNK]) shows the visitor's characters it replaced, so the page can point at them.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MAX_CHARACTERS = 5000  # longer text is refused: the page compares whole texts, and the HTML stays small
MIN_TOKENIZERS = 1
MAX_TOKENIZERS = 4  # side by side, more than four no longer fits the page
NOTE_EXAMPLES = 3  # characters named in a note before "and N more"
WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")  # the visitor's words: runs of letters/digits, or of punctuation
HUGE_CONTEXT = 10**9  # transformers' "no limit" sentinel (int(1e30)) is above this
TEMPLATE_MARKER = "@@VISITOR_TEXT_MARKER@@"  # rendered in place of the text to find where the template puts it
IDS_HEADERS = ["#", "id", "token", "shown", "start", "end", "word", "flags"]
PASTEL_COLOURS = ("#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f3e3")

# Control characters shown visibly: C0 controls and DEL have Unicode "control pictures" (U+2400..U+2421).
C0_NAMES = ("NULL", "START OF HEADING", "START OF TEXT", "END OF TEXT", "END OF TRANSMISSION", "ENQUIRY",
            "ACKNOWLEDGE", "BELL", "BACKSPACE", "CHARACTER TABULATION", "LINE FEED", "LINE TABULATION",
            "FORM FEED", "CARRIAGE RETURN", "SHIFT OUT", "SHIFT IN", "DATA LINK ESCAPE", "DEVICE CONTROL ONE",
            "DEVICE CONTROL TWO", "DEVICE CONTROL THREE", "DEVICE CONTROL FOUR", "NEGATIVE ACKNOWLEDGE",
            "SYNCHRONOUS IDLE", "END OF TRANSMISSION BLOCK", "CANCEL", "END OF MEDIUM", "SUBSTITUTE", "ESCAPE",
            "INFORMATION SEPARATOR FOUR", "INFORMATION SEPARATOR THREE", "INFORMATION SEPARATOR TWO",
            "INFORMATION SEPARATOR ONE")
VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
ORDINARY_CONTROLS = "\n\t\r"  # control characters any pasted text has: no note for these


@dataclass
class Token:
    index: int  # position in the tokenizer's output, specials and template tokens included
    id: int
    text: str  # as the vocabulary spells it: 'Ġthe', '##ing', '[CLS]'
    shown: str  # what the page shows (see the module docstring)
    start: int | None  # character offsets into the visitor's text; None for specials and template tokens
    end: int | None
    word: int | None  # index into the visitor's words (Comparison.words / Tokenization.words); None if none
    special: bool  # a special token the tokenizer or the template added ([CLS], <|im_start|>)
    unknown: bool  # the tokenizer's unknown token, standing for characters it has no piece for
    template: bool  # added by the chat template, not from the visitor's text
    source: str = ""  # the visitor's characters the token covers ('' for specials and template tokens)

    @property
    def flags(self) -> str:
        return ", ".join(name for name in ("special", "template", "unknown") if getattr(self, name))


@dataclass
class Word:
    index: int
    text: str
    start: int
    end: int


@dataclass
class Tokenization:
    label: str
    kind: str  # "WordPiece", "byte-level BPE", "BPE", "SentencePiece/Unigram", "word-level"
    vocab_size: int  # len(tokenizer): the base vocabulary plus added tokens
    text: str  # the visitor's text as checked (what offsets index into)
    tokens: list[Token]
    count: int  # tokens from the visitor's text: neither special nor template
    specials: int  # special tokens (including the template's specials)
    unknown: int  # unknown tokens
    template_tokens: int  # tokens the chat template added (specials among them too)
    context: int | None  # the model's context length in tokens; None when unknown
    over_context: bool  # all tokens together are more than the context
    words: list[Word]
    per_word: list[tuple[str, list[str]]]  # each visitor word and the shown pieces it was split into
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (position, char) no token covers (not spaces)
    chat_template: bool = False  # whether the chat template was applied
    notes: list[str] = field(default_factory=list)  # for the visitor, about this tokenizer

    @property
    def total(self) -> int:
        return len(self.tokens)

    @property
    def tokens_per_word(self) -> float:
        return self.count / max(1, len(self.words))

    def summary(self) -> str:
        """The header line: '12 tokens · 2 specials · 0 unknown · vocabulary 30,522'."""
        parts = [_plural(self.count, "token"), _plural(self.specials, "special"), f"{self.unknown} unknown"]
        if self.template_tokens:
            parts.append(f"{self.template_tokens} from the chat template")
        parts.append(f"vocabulary {self.vocab_size:,}")
        parts.append(f"context {self.context:,}" if self.context else "context unknown")
        return " · ".join(parts)


@dataclass
class Comparison:
    text: str
    tokenizations: list[Tokenization]
    notes: list[str]  # the text's notes, then each tokenizer's, prefixed with its label
    words: list[Word]
    counts: list[list[int]]  # counts[word][tokenizer]: tokens of that word, in `tokenizations` order

    @property
    def tokens_per_word(self) -> dict[str, float]:
        """Overall tokens per word, by label (all the visitor's tokens over the number of words)."""
        return {t.label: t.tokens_per_word for t in self.tokenizations}

    def words_table(self) -> tuple[list[str], list[list[Any]]]:
        """Headers and rows: one row per word (its tokens per tokenizer), then a last row of tokens per word."""
        headers = ["word"] + [t.label for t in self.tokenizations]
        rows: list[list[Any]] = [[word.text, *counts] for word, counts in zip(self.words, self.counts)]
        rows.append(["tokens per word", *(round(t.tokens_per_word, 2) for t in self.tokenizations)])
        return headers, rows


# ---------------------------------------------------------------- the text


def describe_character(char: str) -> str:
    """'U+0007 BELL': the code point and its name (control characters have none in unicodedata)."""
    code = ord(char)
    name = unicodedata.name(char, "")
    if not name and code < 0x20:
        name = C0_NAMES[code]
    elif not name and code == 0x7F:
        name = "DELETE"
    elif not name:
        name = {"Co": "PRIVATE USE", "Cs": "SURROGATE", "Cc": "CONTROL"}.get(unicodedata.category(char),
                                                                            "UNASSIGNED")
    return f"U+{code:04X} {name}"


def visible(text: str) -> str:
    """`text` with whitespace, control, invisible and unassigned characters made visible (see the docstring)."""
    out = []
    for char in text:
        code = ord(char)
        category = unicodedata.category(char)
        if char in VISIBLE_WHITESPACE:
            out.append(VISIBLE_WHITESPACE[char])
        elif code < 0x20:
            out.append(chr(0x2400 + code))
        elif code == 0x7F:
            out.append("␡")
        elif category in ("Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp") or (category == "Zs" and char != " "):
            out.append(f"<U+{code:04X}>")
        else:
            out.append(char)
    return "".join(out)


def _listed(found: list[tuple[int, str]], shown: bool = True) -> str:
    named = [f"{describe_character(char)} at position {position}" for position, char in found[:NOTE_EXAMPLES]]
    if len(found) > NOTE_EXAMPLES:
        named.append(f"and {len(found) - NOTE_EXAMPLES} more")
    listing = ", ".join(named)
    if not shown:
        return listing
    glyphs = sorted({visible(char) for _, char in found})
    return f"{listing}): shown as {' '.join(glyphs[:NOTE_EXAMPLES])}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def check_text(text: Any) -> tuple[str, list[str]]:
    """The visitor's text, checked: returns (text, notes). Refuses (ValueError) text that is not a string, empty,
    only whitespace, or longer than MAX_CHARACTERS. Passes with a note: control characters (other than newline,
    tab, carriage return), invisible format characters (zero-width space/joiner, BOM, bidi controls), unusual
    spaces, private-use and unassigned code points, stray or stacked combining marks, the replacement character,
    and text that NFC normalization would change. Lone surrogates (which no tokenizer can encode) are replaced
    by U+FFFD, with a note; that is the only change made to the text."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(f"The text must be a string, not {type(text).__name__}.")
    if not text:
        raise ValueError("The text is empty: type or paste some text to tokenize.")
    if len(text) > MAX_CHARACTERS:
        raise ValueError(f"The text is {len(text):,} characters long; the limit is {MAX_CHARACTERS:,} "
                         "characters. Shorten it.")
    if not text.strip():
        raise ValueError(f"The text is only whitespace ({_plural(len(text), 'character')}): "
                         "type some words to tokenize.")

    notes: list[str] = []
    surrogates = [(i, c) for i, c in enumerate(text) if unicodedata.category(c) == "Cs"]
    if surrogates:
        notes.append(f"The text has {_plural(len(surrogates), 'lone surrogate')} ({_listed(surrogates, False)}), "
                     "which is not valid Unicode: replaced by U+FFFD REPLACEMENT CHARACTER.")
        text = "".join("\ufffd" if unicodedata.category(c) == "Cs" else c for c in text)

    controls, invisible, spaces, private, unassigned, replacement, stray = [], [], [], [], [], [], []
    stacked: list[tuple[int, str]] = []
    marks_in_a_row = 0
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if category.startswith("M"):
            marks_in_a_row += 1
            previous = text[position - 1] if position else ""
            if marks_in_a_row == 1 and (not previous or previous.isspace()
                                        or unicodedata.category(previous) in ("Cc", "Cf")):
                stray.append((position, char))  # a combining mark with no base character to sit on
            elif marks_in_a_row == 3:
                stacked.append((position, char))  # three or more on one character: "zalgo" text
            continue
        marks_in_a_row = 0
        if category == "Cc" and char not in ORDINARY_CONTROLS:
            controls.append((position, char))
        elif category == "Cf":
            invisible.append((position, char))
        elif category in ("Zs", "Zl", "Zp") and char != " ":
            spaces.append((position, char))
        elif category == "Co":
            private.append((position, char))
        elif category == "Cn":
            unassigned.append((position, char))
        elif char == "\ufffd" and not surrogates:
            replacement.append((position, char))

    if controls:
        notes.append(f"The text has {_plural(len(controls), 'control character')} ({_listed(controls)}.")
    if invisible:
        notes.append(f"The text has {_plural(len(invisible), 'invisible format character')} (zero-width or "
                     f"direction marks: {_listed(invisible)}; tokenizers may drop them or spend tokens on them.")
    if spaces:
        notes.append(f"The text has {_plural(len(spaces), 'unusual space')} ({_listed(spaces)}.")
    if private:
        notes.append(f"The text has {_plural(len(private), 'private-use character')} ({_listed(private)}; "
                     "they mean nothing to a tokenizer.")
    if unassigned:
        notes.append(f"The text has {_plural(len(unassigned), 'unassigned code point')} ({_listed(unassigned)}; "
                     "Unicode gives them no meaning.")
    if replacement:
        notes.append(f"The text has {_plural(len(replacement), 'replacement character')} "
                     f"({_listed(replacement, False)}): it may have been decoded wrongly somewhere before.")
    if stray:
        notes.append(f"The text has {_plural(len(stray), 'combining mark')} with no letter before it "
                     f"({_listed(stray, False)}).")
    if stacked:
        notes.append(f"The text stacks three or more combining marks on one letter {len(stacked)} "
                     f"{'time' if len(stacked) == 1 else 'times'} ({_listed(stacked, False)}).")
    normalized = unicodedata.normalize("NFC", text)
    if normalized != text:
        notes.append(f"The text is not in Unicode NFC form: NFC would change it ({len(text)} characters would "
                     f"become {len(normalized)}, e.g. composing a letter and its accent into one character); "
                     "tokenizers that normalize see the NFC form, the others see the characters as typed.")
    return text, notes


def split_words(text: str) -> list[Word]:
    """The visitor's words as the page counts them: runs of letters/digits/underscore, or of punctuation."""
    return [Word(i, m.group(), m.start(), m.end()) for i, m in enumerate(WORD_PATTERN.finditer(text))]


# ---------------------------------------------------------------- the tokenizer


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: each of the 256 printable stand-ins -> the byte it stands for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def decode_bytes(data: bytes) -> str:
    """UTF-8 bytes as text, with every byte that is not part of a whole character shown as '<0xE2>'."""
    out, position = [], 0
    while position < len(data):
        for length in (1, 2, 3, 4):
            try:
                out.append(data[position:position + length].decode("utf-8"))
                position += length
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append(f"<0x{data[position]:02X}>")
            position += 1
    return "".join(out)


def _spelling(backend: Any) -> tuple[str, bool, bool, str]:
    """(kind, byte_level, metaspace, continuing prefix) read from the backend tokenizer's model and pipeline."""
    model = backend.model
    model_type = type(model).__name__
    pipeline = f"{backend.pre_tokenizer!r} {backend.decoder!r}"
    byte_level = "ByteLevel" in pipeline
    metaspace = "Metaspace" in pipeline or 'Replace(pattern=String("▁")' in pipeline
    prefix = getattr(model, "continuing_subword_prefix", None) or ""
    if model_type == "WordPiece":
        kind = "WordPiece"
    elif model_type == "BPE":
        kind = "byte-level BPE" if byte_level else ("SentencePiece BPE" if metaspace else "BPE")
    elif model_type == "Unigram":
        kind = "SentencePiece/Unigram"
    elif model_type == "WordLevel":
        kind = "word-level"
    else:
        kind = model_type
    return kind, byte_level, metaspace, prefix


def show_piece(piece: str, byte_level: bool, metaspace: bool, prefix: str) -> str:
    """The characters a vocabulary piece stands for, made visible ('Ġthe' -> '␣the', '##ing' -> 'ing')."""
    if byte_level:
        decoder = _byte_decoder()
        if all(char in decoder for char in piece):
            return visible(decode_bytes(bytes(decoder[char] for char in piece)))
        return visible(piece)
    if prefix and piece.startswith(prefix) and piece != prefix:
        piece = piece[len(prefix):]
    if metaspace:
        piece = piece.replace("▁", " ")
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):  # SentencePiece byte fallback: already a byte escape
        return piece.upper().replace("0X", "0x")
    return visible(piece)


def context_length(tokenizer: Any) -> int | None:
    """The model's context in tokens: the tokenizer's model_max_length, else max_position_embeddings from the
    model's config.json (a local folder, or the hub's local cache, never the network); None when unknown."""
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < HUGE_CONTEXT:
        return length
    source = str(getattr(tokenizer, "name_or_path", "") or "")
    config_file: Any = Path(source) / "config.json" if source else None
    if config_file is None or not config_file.is_file():
        config_file = None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json") if source else None
            config_file = Path(cached) if isinstance(cached, str) else None
        except Exception:  # not a hub id, or no cache: the context is simply unknown
            config_file = None
    if config_file is None:
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = config.get(key) or config.get("text_config", {}).get(key)
        if isinstance(value, int) and 0 < value < HUGE_CONTEXT:
            return value
    return None


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(token_id))
    return ids


def _label_of(tokenizer: Any) -> str:
    source = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    return Path(source).name if Path(source).is_dir() else source


def _visitor_region(tokenizer: Any, text: str) -> tuple[str, int, int, int]:
    """The templated string and where the visitor's text lies in it: (templated, start, end, shift), where
    templated[start:end] == text[shift:shift + end - start]. The template is also rendered around a marker to
    find the message's place, so a short text that also occurs in the system prompt is not found there."""
    def render(content: str) -> str:
        try:
            return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as error:  # a template's own checks raise jinja's TemplateError, not ValueError
            raise ValueError(f"The chat template refused a single user message ({error}): "
                             "turn the chat template off.") from error

    templated = render(text)
    around_marker = render(TEMPLATE_MARKER)
    from_here = max(0, around_marker.find(TEMPLATE_MARKER))
    for candidate in (text, text.strip()):  # some templates trim the message
        start = templated.find(candidate, from_here)
        if start < 0:
            start = templated.find(candidate)
        if start >= 0:
            return templated, start, start + len(candidate), text.find(candidate)
    raise ValueError("The chat template changed the text beyond recognition, so its tokens cannot be told "
                     "apart from the template's: turn the chat template off.")


def tokenize(label_or_tokenizer: Any, text: str, chat_template: bool = False) -> Tokenization:
    """The text split by one tokenizer (a label for `load_tokenizer`, or a loaded fast tokenizer).
    With `chat_template` and a tokenizer that has one, the text goes in as a user message with the generation
    prompt after it, and the tokens the template adds are marked `template`; without one, a note says so and the
    text is tokenized plainly (with the tokenizer's own specials). Raises ValueError for bad text (check_text)."""
    text, _ = check_text(text)
    if isinstance(label_or_tokenizer, str):
        from spaces.inside.models import load_tokenizer

        label, tokenizer = label_or_tokenizer, load_tokenizer(label_or_tokenizer)
    else:
        tokenizer = label_or_tokenizer
        label = _label_of(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"The tokenizer {label!r} is a slow (Python) tokenizer: the page needs a fast one, "
                         "which reports where each token lies in the text.")
    kind, byte_level, metaspace, prefix = _spelling(backend)
    notes: list[str] = []

    use_template = bool(chat_template and getattr(tokenizer, "chat_template", None))
    if chat_template and not use_template:
        notes.append(f"{label} has no chat template: the text is tokenized as it is.")
    if use_template:
        encoded_text, region_start, region_end, shift = _visitor_region(tokenizer, text)
        # The template already holds every special token the model expects (as apply_chat_template does).
        encoding = tokenizer(encoded_text, add_special_tokens=False, return_offsets_mapping=True,
                             verbose=False)
    else:
        encoded_text, region_start, region_end, shift = text, 0, len(text), 0
        encoding = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, verbose=False)

    words = split_words(text)
    word_at: list[int | None] = [None] * len(text)  # each character's word, for tokens to find theirs
    for w in words:
        word_at[w.start:w.end] = [w.index] * (w.end - w.start)
    special_ids = _special_ids(tokenizer)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    tokens: list[Token] = []
    covered = [False] * len(text)
    typed_specials: list[str] = []
    for index, (token_id, piece, (start, end)) in enumerate(zip(encoding["input_ids"], pieces,
                                                                 encoding["offset_mapping"])):
        raw = encoded_text[start:end]
        # A special token's id also comes out for text that spells it ('<|im_start|>' typed by the visitor),
        # and [UNK] is one of the specials: only an added token or a literal spelling counts as special here.
        special = token_id in special_ids and (raw == "" or raw == piece)
        inside = start < region_end and end > region_start and end > start
        template = use_template and not inside
        if inside:
            visitor_start = max(start, region_start) - region_start + shift
            visitor_end = min(end, region_end) - region_start + shift
            source = text[visitor_start:visitor_end]
        else:
            visitor_start = visitor_end = None
            source = ""
        unknown = unk_id is not None and token_id == unk_id and not special
        if special and inside:
            typed_specials.append(piece)
        if unknown:
            shown = visible(source) or piece
        elif special:
            shown = piece
        else:
            shown = show_piece(piece, byte_level, metaspace, prefix)
        word = None
        if visitor_start is not None and visitor_end is not None:
            for position in range(visitor_start, visitor_end):
                covered[position] = True
            overlaps = Counter(i for i in word_at[visitor_start:visitor_end] if i is not None)
            if overlaps:  # the word it overlaps most, the first on a tie
                word = min(overlaps, key=lambda i: (-overlaps[i], i))
        tokens.append(Token(index, int(token_id), piece, shown, visitor_start, visitor_end, word, special,
                            unknown, template, source))

    pieces_of_word: list[list[str]] = [[] for _ in words]
    for token in tokens:
        if token.word is not None:
            pieces_of_word[token.word].append(token.shown)
    per_word = [(w.text, pieces) for w, pieces in zip(words, pieces_of_word)]
    dropped = [(position, char) for position, char in enumerate(text) if not covered[position]
               and not char.isspace()]
    count = sum(1 for t in tokens if not t.special and not t.template)
    context = context_length(tokenizer)
    over_context = context is not None and len(tokens) > context
    unknown_tokens = [t for t in tokens if t.unknown]
    if unknown_tokens:
        characters = sorted({t.source for t in unknown_tokens if t.source})
        notes.append(f"{label} has no piece for {', '.join(repr(c) for c in characters[:NOTE_EXAMPLES])}"
                     f"{' and more' if len(characters) > NOTE_EXAMPLES else ''}: "
                     f"{_plural(len(unknown_tokens), 'unknown token')} ({unknown_tokens[0].text}).")
    if dropped:
        notes.append(f"{label} drops {_plural(len(dropped), 'character')} (no token stands for "
                     f"{_listed(dropped, False)}).")
    if typed_specials:
        notes.append(f"{label} reads {', '.join(sorted(set(typed_specials)))} in the text as a special token, "
                     "not as text.")
    if over_context:
        notes.append(f"{label}: {len(tokens):,} tokens, more than its context of {context:,}: the model would "
                     f"see only the first {context:,}.")
    return Tokenization(
        label=label, kind=kind, vocab_size=len(tokenizer), text=text, tokens=tokens, count=count,
        specials=sum(1 for t in tokens if t.special), unknown=len(unknown_tokens),
        template_tokens=sum(1 for t in tokens if t.template), context=context, over_context=over_context,
        words=words, per_word=per_word, dropped=dropped, chat_template=use_template, notes=notes,
    )


def compare(labels: list[str], text: str, chat_template: bool = False) -> Comparison:
    """The text split by each tokenizer in `labels` (MIN_TOKENIZERS to MAX_TOKENIZERS, repeats dropped), with
    the text's notes and every tokenizer's, and the tokens each used for each of the visitor's words.
    Raises ValueError for bad text, a wrong number of labels, or an unknown label (load_tokenizer's message)."""
    text, notes = check_text(text)
    if isinstance(labels, str):
        labels = [labels]
    chosen = list(dict.fromkeys(label for label in (labels or []) if label))
    if not MIN_TOKENIZERS <= len(chosen) <= MAX_TOKENIZERS:
        raise ValueError(f"Choose between {MIN_TOKENIZERS} and {MAX_TOKENIZERS} tokenizers to compare; "
                         f"{len(chosen)} chosen.")
    tokenizations = [tokenize(label, text, chat_template) for label in chosen]
    for tokenization in tokenizations:
        notes.extend(note if note.startswith(tokenization.label) else f"{tokenization.label}: {note}"
                     for note in tokenization.notes)
    words = split_words(text)
    counts = [[len(tokenization.per_word[word.index][1]) for tokenization in tokenizations] for word in words]
    return Comparison(text, tokenizations, notes, words, counts)


# ---------------------------------------------------------------- the views


def _title(token: Token) -> str:
    parts = [f"id {token.id}", repr(token.text)]
    if token.start is not None:
        parts.append(f"chars {token.start}–{token.end}")
    if token.unknown and token.source:
        parts.append(" ".join(describe_character(char) for char in token.source[:NOTE_EXAMPLES]))
    if token.flags:
        parts.append(token.flags)
    return " · ".join(parts)


def _tokens_css() -> str:
    colours = "".join(f".token-view .token.c{i}{{background:{colour}}}" for i, colour in enumerate(PASTEL_COLOURS))
    return (".token-view .token-spans{line-height:1.9}"
            ".token-view .token{padding:0 2px;margin:1px;border:1px solid transparent;border-radius:3px;"
            # inline-block: a line may break between two tokens (plain inline spans with nothing between them
            # never break, so a long text ran out of its column); `pre` keeps each token's own spaces.
            "white-space:pre;font-family:monospace;display:inline-block}" + colours
            + ".token-view .token.token-special,.token-view .token.token-template{background:#e5e7eb;"
            "border:1px dashed #6b7280;color:#374151}"
            ".token-view .token.token-unknown{background:#f8b4b4;border:1px solid #c0392b;color:#7b1010}"
            ".token-view .token.token-beyond{opacity:0.45}")


TOKENS_CSS = _tokens_css()  # also in every fragment's <style>; the page may add it to its Blocks css instead


def tokens_html(tokenization: Tokenization) -> str:
    """An HTML fragment (a div of class token-view): a header line of counts, then one <span class="token"
    data-token-id> per token, coloured by position (a cycle of six pastels, classes c0..c5), specials and template
    tokens grey with a dashed border, unknown tokens red, tokens past the context faded. Styled by classes (with
    TOKENS_CSS in a <style>), so a long text stays small. Every piece of text is HTML-escaped; a newline in a
    token also breaks the line."""
    spans = []
    for token in tokenization.tokens:
        classes = ["token", f"c{token.index % len(PASTEL_COLOURS)}"]
        if token.unknown:
            classes.append("token-unknown")
        elif token.special:
            classes.append("token-special")
        elif token.template:
            classes.append("token-template")
        if tokenization.context is not None and token.index >= tokenization.context:
            classes.append("token-beyond")
        spans.append(f'<span class="{" ".join(classes)}" data-token-id="{token.id}" '
                     f'title="{html.escape(_title(token), quote=True)}">{html.escape(token.shown)}</span>'
                     + ("<br>" if token.shown.endswith("↵") else ""))
    header = (f'<div class="token-header"><b>{html.escape(tokenization.label)}</b> '
              f'({html.escape(tokenization.kind)}): {html.escape(tokenization.summary())}</div>')
    return (f'<div class="token-view" data-label="{html.escape(tokenization.label, quote=True)}">'
            f'<style>{TOKENS_CSS}</style>{header}<div class="token-spans">{"".join(spans)}</div></div>')


def ids_table(tokenization: Tokenization) -> list[list[Any]]:
    """Rows under IDS_HEADERS: [index, id, token text, shown, start, end, word, flags] (None where none; flags
    like 'special, template')."""
    return [[t.index, t.id, t.text, t.shown, t.start, t.end,
             tokenization.words[t.word].text if t.word is not None else None, t.flags]
            for t in tokenization.tokens]
