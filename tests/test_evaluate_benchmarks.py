"""Reading VLMEvalKit benchmark TSVs: kinds from names, NA options, image references and lists, lazy decoding, the
JPEG round trip, each benchmark's own columns, and errors naming the file, row and column."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from llavao1_jax import evaluate as ev
from evaluate_files import HEADERS, png_base64, write_tsv

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _pixel(image):
    return tuple(np.asarray(image)[0, 0])


@pytest.mark.parametrize("name,kind", [("MMStar", "mmstar"), ("MMBench_DEV_EN_V11", "mmbench"),
                                       ("AI2D_TEST_NO_MASK", "ai2d"), ("HallusionBench", "hallusionbench"),
                                       ("MathVista_MINI", "mathvista"), ("MMVet", "mmvet")])
def test_kind_from_vlmevalkit_name(name, kind):
    assert ev.kind_from_name(name) == kind


def test_unknown_kind_is_an_error_naming_the_known_ones(tmp_path):
    path = write_tsv(tmp_path / "ScienceQA.tsv", [{"index": 0}], header=["index"])
    with pytest.raises(ValueError, match="unknown benchmark 'ScienceQA'.*MMStar"):
        ev.read_benchmark(path)
    with pytest.raises(ValueError, match="unknown benchmark kind 'vqa'"):
        ev.read_benchmark(path, kind="vqa")


def test_mmstar_na_options_are_dropped_or_kept(tmp_path):
    path = write_tsv(tmp_path / "MMStar.tsv", [
        dict(index=0, question="Colour?", answer="B", category="coarse perception", A="red", B="green", C="None",
             D="", image=png_base64(GREEN)),
        dict(index=1, question="Count?", answer="A", category="math", A="3", B="NA", C="N/A", D="null",
             image=png_base64(RED, mode="RGBA"))])
    bench = ev.read_benchmark(path)
    assert (bench.name, bench.kind, len(bench)) == ("MMStar", "mmstar", 2)
    row = bench[0]
    assert (row.index, row.question, row.answer, row.category) == (0, "Colour?", "B", "coarse perception")
    assert row.options == {"A": "red", "B": "green"}
    assert bench[1].options == {"A": "3"}
    kept = ev.read_benchmark(path, keep_none_options=True)
    assert kept[0].options == {"A": "red", "B": "green", "C": "None"}
    assert kept[1].options == {"A": "3"}  # NA, N/A, null stay missing
    image = bench[1].image()
    assert image.mode == "RGB" and _pixel(image) == RED  # RGBA converted


def test_mmbench_circular_copies_reference_the_base_row_image(tmp_path):
    base = dict(question="Which?", hint="Look left.", category="image_scene", source="x",
                **{"l2-category": "coarse_perception"}, comment="", split="dev")
    path = write_tsv(tmp_path / "MMBench_DEV_EN_V11.tsv", [
        dict(base, index=7, A="cat", B="dog", answer="A", image=png_base64(BLUE)),
        dict(base, index=1_000_007, A="dog", B="cat", answer="B", image="7", hint="nan"),
        dict(base, index=8, A="x", B="y", C="z", answer="C", image=png_base64(RED))])
    bench = ev.read_benchmark(path)
    copy = bench.by_index()["1000007"]
    assert copy.index == 1_000_007 and copy.options == {"A": "dog", "B": "cat"}
    assert _pixel(copy.image()) == BLUE
    assert (bench[0].hint, copy.hint) == ("Look left.", None)
    assert (bench[0].l2_category, bench[0].split) == ("coarse_perception", "dev")
    assert bench[2].options == {"A": "x", "B": "y", "C": "z"}


def test_reference_to_a_missing_row_names_file_line_and_column(tmp_path):
    path = write_tsv(tmp_path / "MMStar.tsv", [
        dict(index=0, question="q", answer="A", category="c", A="a", image=png_base64(RED)),
        dict(index=1, question="q", answer="A", category="c", A="a", image="5")])
    with pytest.raises(ValueError, match=r"MMStar.tsv: line 3 \(index 1\), column 'image': '5' refers to row"):
        ev.read_benchmark(path)


def test_missing_required_column_names_file_and_column(tmp_path):
    path = write_tsv(tmp_path / "MMStar.tsv", [dict(index=0, question="q", A="a", image=png_base64(RED))],
                     header=["index", "question", "A", "image"])
    with pytest.raises(ValueError, match=r"MMStar.tsv: missing required column\(s\) \['answer', 'category'\]"):
        ev.read_benchmark(path)


def test_images_are_decoded_lazily_and_bad_ones_name_the_row(tmp_path):
    path = write_tsv(tmp_path / "MMVet.tsv", [
        dict(index=0, image=base64.b64encode(b"not an image at all, but long enough to not be a reference").decode(),
             question="What is it?", answer="a cat<OR>cat", category="rec"),
        dict(index=1, image="", question="dropped", answer="x", category="rec")])
    bench = ev.read_benchmark(path)  # reading does not decode
    assert len(bench) == 1 and bench.dropped == (1,)
    assert bench[0].answer == "a cat<OR>cat"
    with pytest.raises(ValueError, match="row 0, column 'image': undecodable base64 image"):
        bench[0].image()


def test_image_lists_and_jpeg_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    noisy = base64.b64encode(buffer.getvalue()).decode()
    path = write_tsv(tmp_path / "MMVet.tsv", [
        dict(index=0, image=noisy, question="q", answer="a", category="rec"),
        dict(index=1, image=str([png_base64(RED), png_base64(GREEN)]), question="q", answer="a", category="rec")])
    assert [_pixel(im) for im in ev.read_benchmark(path)[1].images()] == [RED, GREEN]
    png = np.asarray(ev.read_benchmark(path)[0].image())
    jpeg = np.asarray(ev.read_benchmark(path, jpeg_round_trip=True)[0].image())
    expected = io.BytesIO()
    noise.save(expected, format="JPEG")  # PIL's default quality, as P24's `{index}.jpg`
    np.testing.assert_array_equal(png, np.asarray(noise))
    np.testing.assert_array_equal(jpeg, np.asarray(Image.open(expected)))
    assert not np.array_equal(png, jpeg)


def test_ai2d_reads_image_path_when_the_file_has_no_image_column(tmp_path):
    Image.new("RGB", (4, 4), GREEN).save(tmp_path / "7.png")
    rows = [dict(index=7, question="Which label?", A="leaf", B="stem", C="root", D="flower", answer="C",
                 category="parts", abcLabel="False", image_path="7.png")]
    header = [c for c in HEADERS["AI2D_TEST"] if c != "image"]
    row = ev.read_benchmark(write_tsv(tmp_path / "AI2D_TEST.tsv", rows, header))[0]
    assert _pixel(row.image()) == GREEN
    assert row.options == {"A": "leaf", "B": "stem", "C": "root", "D": "flower"}
    assert row.fields["abcLabel"] is False  # pandas reads the column as booleans, as VLMEvalKit does
    # With an `image` column, VLMEvalKit drops the rows whose image is empty, image_path or not.
    bench = ev.read_benchmark(write_tsv(tmp_path / "AI2D_TEST.tsv", rows))
    assert (len(bench), bench.dropped) == (0, (7,))


def test_hallusionbench_string_indices_and_groups(tmp_path):
    path = write_tsv(tmp_path / "HallusionBench.tsv", [
        dict(index="VS_chart_0_3_1_2", image=png_base64(RED), question="Is it red?", answer="Yes", category="VS",
             **{"l2-category": "VS_chart"})])
    row = ev.read_benchmark(path)[0]
    assert row.index == "VS_chart_0_3_1_2" and row.l2_category == "VS_chart" and row.category == "VS"
    from llavao1_jax.evaluate.scoring import hallusion_ids
    assert hallusion_ids(row) == ("3", "1", "2")


def test_mathvista_choices_answer_type_and_option(tmp_path):
    common = dict(image=png_base64(RED), precision="", task="figure question answering",
                  skills="['algebraic reasoning']")
    path = write_tsv(tmp_path / "MathVista_MINI.tsv", [
        dict(common, index=1, question="Hint: pick\nQuestion: which?\nChoices:\n(A) 2\n(B) 4", answer="4",
             question_type="multi_choice", answer_type="text", answer_option="B", choices="['2', '4']"),
        dict(common, index=2, question="How many?", answer="3", question_type="free_form", answer_type="integer",
             answer_option="", choices="")])
    bench = ev.read_benchmark(path)
    assert bench[0].options == {"A": "2", "B": "4"}
    assert (bench[0].fields["answer_type"], bench[0].fields["answer_option"]) == ("text", "B")
    assert bench[1].options == {} and bench[1].answer == "3" and bench[1].fields["answer_option"] is None
