"""The four-stage answer format: parsing, its errors, and the three renderings."""
import pytest

from llavao1_jax.data import formats

TAGGED = ("<SUMMARY> I will count. </SUMMARY>\n\n<CAPTION> Two red circles. </CAPTION>\n\n"
          "<REASONING> 1 + 1 = 2. </REASONING>\n\n<CONCLUSION> 2 </CONCLUSION>")


def test_parse_and_render_round_trip():
    stages = formats.parse_stages(TAGGED)
    assert stages == formats.Stages("I will count.", "Two red circles.", "1 + 1 = 2.", "2")
    assert formats.render_answer(stages, "tagged") == TAGGED
    assert formats.render_answer(stages, "untagged") == "I will count.\n\nTwo red circles.\n\n1 + 1 = 2.\n\n2"
    assert formats.render_answer(stages, "direct") == "2"
    assert formats.convert_answer(TAGGED, "direct") == "2"
    odd_spacing = TAGGED.replace("\n\n", "\n")
    assert formats.convert_answer(odd_spacing, "tagged") == odd_spacing  # the original text is kept as it is


@pytest.mark.parametrize("answer, reason", [
    ("just 2", "missing_tags"),
    (TAGGED.replace("</CAPTION>", ""), "missing_tags"),
    (TAGGED + " <CONCLUSION> 3 </CONCLUSION>", "repeated_tags"),
    (TAGGED.replace("SUMMARY", "X").replace("CAPTION", "SUMMARY").replace("X", "CAPTION"), "tags_out_of_order"),
    ("<SUMMARY> a <CAPTION> b </SUMMARY> </CAPTION> <REASONING> c </REASONING> <CONCLUSION> d </CONCLUSION>",
     "tags_out_of_order"),
])
def test_parse_errors(answer, reason):
    with pytest.raises(formats.StageError) as e:
        formats.parse_stages(answer)
    assert e.value.reason == reason


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown answer format"):
        formats.render_answer(formats.parse_stages(TAGGED), "json")


def test_stage_pieces_and_judge_replies_pass_every_format():
    stages = formats.parse_stages(TAGGED)
    assert formats.tagged_pieces(stages) == ("<SUMMARY> I will count. </SUMMARY>\n\n",
                                             "<CAPTION> Two red circles. </CAPTION>\n\n",
                                             "<REASONING> 1 + 1 = 2. </REASONING>\n\n", "<CONCLUSION> 2 </CONCLUSION>")
    verdict = "Since the circle is red, I choose response 2."
    assert all(formats.convert_answer(verdict, fmt) == verdict for fmt in formats.FORMATS)
    with pytest.raises(formats.StageError):  # anything else without tags is still refused
        formats.convert_answer("Since the circle is red, I choose response 3.", "direct")
