from hypothesis import given, settings
from hypothesis import strategies as st

from edgereason.formats import get_format
from edgereason.serve.reasoning import ReasoningSplitter

FMT = get_format()
TEXT = "<reasoning>\nWe add 3 < 4 and 4 + 3 = 7.\n</reasoning>\n<answer>\n7\n</answer>"


def split(pieces):
    s = ReasoningSplitter(FMT)
    out = {"reasoning": "", "content": ""}
    for p in pieces:
        for kind, text in s.feed(p):
            out[kind] += text
    return out


def test_split_whole_text():
    out = split([TEXT])
    assert out["reasoning"] == "We add 3 < 4 and 4 + 3 = 7."
    assert out["content"] == "7"


def test_streamed_pieces_join_into_what_the_parser_returns():
    """Inner whitespace and line breaks survive; each block's outer whitespace goes, as in parse()."""
    text = "<reasoning>\n  Step one.\n\nStep two:  5 + 2 = 7  \n</reasoning>\n<answer>\n 7 apples \n</answer>"
    parsed = FMT.parse(text)
    for pieces in ([text], list(text)):
        out = split(pieces)
        assert out == {"reasoning": parsed.reasoning, "content": parsed.answer}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(TEXT)), max_size=30))
def test_split_is_independent_of_chunking(cuts):
    points = sorted(set(cuts))
    pieces = [TEXT[a:b] for a, b in zip([0, *points], [*points, len(TEXT)])]
    assert split(pieces) == split([TEXT])
