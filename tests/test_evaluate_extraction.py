"""Answer extraction against VLMEvalKit's rules, expected values worked out by hand from those rules: can_infer with
the paper-era ("p24") and today's ("head") rules, yes/no with its punctuation pass, and the <CONCLUSION> body."""
import pytest

from llavao1_jax import evaluate as ev

COLOURS = {"A": "red", "B": "blue", "C": "green", "D": "pink"}


@pytest.mark.parametrize("prediction,expected", [
    ("B", "B"),
    ("The answer is (B).", "B"),
    ("**C**", "C"),
    ("[D]", "D"),
    ("A and B", None),                     # two letters, and neither option text appears
    ("It is blue.", "B"),                  # by option text
    ("blue or green", None),               # two option texts
    ("b", None),                           # letters count only in upper case
    ("B-C", None),                         # '-' separates nothing: the token is "B-C"
    ("Z", "Z"),
    ("Cannot determine the answer", "Z"),  # a refusal
    ("Failed to obtain answer via API. B", None),
])
def test_can_infer_rules_shared_by_both(prediction, expected):
    for rules in ("p24", "head"):
        assert ev.extract_option(prediction, COLOURS, rules=rules) == expected, rules


def test_can_infer_head_wants_the_letter_near_the_end():
    answer = "B is correct since the sky is blue today"  # B is token 0 of 9
    assert ev.extract_option(answer, {"A": "red", "B": "blue"}, rules="p24") == "B"
    # HEAD: not among the last four tokens; the answer (40 chars) is longer than twice the options (2 * 7): nothing.
    assert ev.extract_option(answer, {"A": "red", "B": "blue"}, rules="head") is None
    assert ev.extract_option("I pick B now", {"A": "red", "B": "blue"}, rules="head") == "B"


def test_can_infer_head_answer_is_regex():
    assert ev.extract_option("so the correct answer is c", COLOURS, rules="p24") is None
    assert ev.extract_option("so the correct answer is c", COLOURS, rules="head") == "C"
    assert ev.extract_option("the answer is d", {"A": "x", "B": "y"}, rules="head") is None  # not a choice


def test_can_infer_text_head_length_limit():
    long = "After looking at everything in the picture, it is blue"
    assert ev.extract_option(long, {"A": "red", "B": "blue"}, rules="p24") == "B"
    assert ev.extract_option(long, {"A": "red", "B": "blue"}, rules="head") is None


def test_can_infer_text_head_measures_the_lower_cased_answer():
    # VLMEvalKit lower-cases the answer before the length check: "İ" becomes two characters ("i" and a combining
    # dot), so this 10-character answer is 16 long when checked, over 2 * len("cat" + "dog") = 12.
    answer = "İİİİİİ cat"
    assert len(answer) == 10 and len(answer.lower()) == 16
    assert ev.extract_option(answer, {"A": "cat", "B": "dog"}, rules="p24") == "A"
    assert ev.extract_option(answer, {"A": "cat", "B": "dog"}, rules="head") is None


def test_can_infer_letter_outside_the_window_still_tries_text_and_regex():
    # HEAD: a lone letter that is not among the last four tokens gives nothing by letter (and no "Z" check), but
    # the "answer is" regex and the option texts are still tried.
    assert ev.extract_option("the answer is B and I am sure of it", {"A": "x", "B": "y"}, rules="head") == "B"
    assert ev.extract_option("B, I think, as it is a red one", {"A": "a red one", "B": "a blue one"},
                             rules="head") == "A"


def test_unknown_rules_is_an_error():
    with pytest.raises(ValueError, match="unknown can_infer rules 'v2'"):
        ev.extract_option("A", COLOURS, rules="v2")


@pytest.mark.parametrize("prediction,expected", [
    ("Yes", "Yes"), ("yes.", "Yes"), ("No, it is not.", "No"), ("(yes)", "Yes"),
    ("Yes and no", "Unknown"), ("**Yes**", "Unknown"), ("Answer:Yes", "Unknown"), ("Answer: yes", "Yes"),
    ("yes-no", "Unknown"),         # '-' never next to a space: replaced by a space, "yes no"
    ("ye-s - ok", "Yes"),          # '-' next to a space somewhere: every '-' deleted, "yes  ok"
    ("ye-s x;-", "Unknown"),       # the test reads the original text: ';' becomes a space, but '-' had none beside
                                   # it there, so both '-' become spaces too: "ye s x  "
    ("yes,no", "Unknown"),         # the comma becomes a space: "yes no"
    ("yes,1,000 no", "No"),        # a digit-comma-digit: every comma deleted, "yes1000 no"
    ("maybe", "Unknown"),
    ("." * 33 + "yes.", "Unknown"),  # VLMEvalKit removes at most 32 periods: ".yes." stays one token
    ("." * 30 + "yes.", "Yes"),
])
def test_yes_no_extraction(prediction, expected):
    assert ev.extract_yes_no(prediction) == expected


def test_conclusion_well_formed_malformed_and_tagless():
    tagged = ("<SUMMARY>s</SUMMARY>\n<CAPTION>c</CAPTION>\n<REASONING>A is wrong</REASONING>\n"
              "<CONCLUSION> B </CONCLUSION>")
    assert ev.conclusion(tagged) == "B"
    assert ev.conclusion("<REASONING>r</REASONING><CONCLUSION> The answer is C") == "The answer is C"
    assert ev.conclusion("<CONCLUSION>A</CONCLUSION> then <CONCLUSION>D</CONCLUSION>") == "D"
    assert ev.conclusion("<SUMMARY>s</SUMMARY><REASONING>r</REASONING>\n Yes") == "Yes"
    assert ev.conclusion("  just an answer: B \n") == "just an answer: B"
