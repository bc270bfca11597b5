"""One parser for every list input: schedule_values, frame_weights and image_weights read a text the same way."""
import pytest

from ip_adapter_core.combine import parse_weights
from ip_adapter_core.errors import InputError
from ip_adapter_core.frames import parse_frame_weights
from ip_adapter_core.numbers import parse_numbers, split_entries
from ip_adapter_core.schedule import parse_schedule_values

SAME = ["1, 0.5", "1 0.5", "1;0.5", "1\n0.5", " 1 ,\n 0.5 ;"]


@pytest.mark.parametrize("text", SAME)
def test_every_list_input_reads_the_separators_alike(text):
    assert parse_schedule_values(text) == (1.0, 0.5)
    assert parse_frame_weights(text) == (1.0, 0.5)
    assert parse_weights(text, 2, where="w").tolist() == [1.0, 0.5]


@pytest.mark.parametrize("text", ["1, x", "1, nan", "1, -inf"])
def test_every_list_input_rejects_the_same_bad_value_with_the_same_words(text):
    messages = []
    for call in (lambda: parse_schedule_values(text), lambda: parse_frame_weights(text),
                 lambda: parse_weights(text, 2, where="input 'x'")):
        with pytest.raises(InputError) as e:
            call()
        messages.append(str(e.value).split(": ", 1)[1])  # without the input's name
    assert "value 2" in messages[0] and len(set(messages[i].split(";")[0] for i in range(3))) == 1, messages


def test_parse_numbers_limits_and_blank():
    assert parse_numbers(" \n ", where="w", example="1") == ()
    with pytest.raises(InputError, match="w: 3 values; at most 2"):
        parse_numbers("1 2 3", where="w", example="1", max_count=2)


def test_split_entries_keeps_spaces_inside_an_entry():
    assert split_entries("3 : 1.0, output.1: 0.5\n\n;N29:2") == ["3 : 1.0", "output.1: 0.5", "N29:2"]
