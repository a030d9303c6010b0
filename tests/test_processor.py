"""The whole processor against transformers 4.54.1 `MllamaProcessor` loaded from the directory ours saves."""
import json
import pickle
import random

import numpy as np
import PIL.Image
import pytest
from transformers import AutoProcessor, MllamaProcessor
from transformers.models.mllama import processing_mllama as hf_processing

import llavao1_jax as lj
from llavao1_jax.processor.masks import cross_attention_mask, image_spans
from llavao1_jax.processor.processor import with_bos

IMAGE, BOS = 128256, 128000


def image(height: int, width: int, seed: int = 0, mode: str = "RGB") -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Ours with 56 px tiles (fast) and transformers' processor loaded from ours' saved directory."""
    ours = lj.Processor.llama3_2_vision(tile_size=56, max_image_tiles=4)
    directory = ours.save_pretrained(tmp_path_factory.mktemp("small"))
    return ours, MllamaProcessor.from_pretrained(directory), directory


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The released configuration (560 px tiles) and transformers' AutoProcessor on its saved directory."""
    ours = lj.Processor.llama3_2_vision()
    directory = ours.save_pretrained(tmp_path_factory.mktemp("released"))
    return ours, AutoProcessor.from_pretrained(directory)


def transformers_call(processor, padding_side="right", **kwargs):
    # transformers 4.54.1's processor drops a `padding_side` keyword; the tokenizer's attribute decides.
    processor.tokenizer.padding_side = padding_side
    try:
        out = processor(return_tensors="np", **kwargs)
    finally:
        processor.tokenizer.padding_side = "right"
    return {key: np.asarray(value) for key, value in out.items()}


def assert_same(ours: dict, theirs: dict):
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype, key
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_saved_directory_loads_in_transformers(released, small):
    ours, theirs = released
    assert type(theirs).__name__ == "MllamaProcessor"
    assert type(theirs.image_processor).__name__ == "MllamaImageProcessor"
    assert theirs.image_processor.size == {"height": 560, "width": 560} and theirs.image_processor.max_image_tiles == 4
    assert theirs.image_processor.image_mean == [0.48145466, 0.4578275, 0.40821073]
    assert theirs.image_processor.resample == 2
    assert theirs.chat_template == ours.chat_template == theirs.tokenizer.chat_template
    assert len(theirs.tokenizer) == 128_257 and theirs.image_token_id == IMAGE
    directory = small[2]
    assert {path.name for path in directory.iterdir()} >= {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
        "chat_template.json"}
    assert "chat_template" in json.loads((directory / "tokenizer_config.json").read_text())


def test_haiku_prompt(released):
    ours, theirs = released
    kwargs = dict(images=image(300, 200), text="<|image|>If I had to write a haiku for this one")
    out = ours(**kwargs)
    assert out["input_ids"].tolist() == [[IMAGE, BOS, 2746, 358, 1047, 311, 3350, 264, 6520, 39342, 369, 420, 832]]
    assert out["cross_attention_mask"].shape == (1, 13, 1, 4)
    assert out["cross_attention_mask"][0, :, 0].tolist() == [[1, 0, 0, 0]] * 13
    assert_same(out, transformers_call(theirs, **kwargs))


def chat(*turns):
    """A conversation: strings are text parts, None is an image; turns alternate user/assistant."""
    messages = []
    for index, parts in enumerate(turns):
        content = [{"type": "image"} if part is None else {"type": "text", "text": part} for part in parts]
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": content})
    return messages


def cases(processor):
    """(name, images, text, call keywords) for the parity checks; images are built fresh per case."""
    multi_turn = processor.apply_chat_template(
        chat([None, "What is in the picture?"], ["A cat on a mat."], [None, "And here? Compare both."]),
        add_generation_prompt=True)
    single_chat = processor.apply_chat_template(chat([None, "Describe it."]), add_generation_prompt=True)
    return [
        ("one image", [image(70, 90)], "<|image|>What is this?", {}),
        ("one and two images, right", [[image(40, 300)], [image(120, 100, 1), image(30, 20, 2)]],
         ["<|image|>Short", "Look <|image|> then <|image|> and a much longer question follows"],
         {"padding": True}),
        ("one and two images, left", [[image(40, 300)], [image(120, 100, 1), image(30, 20, 2)]],
         ["<|image|>Short", "Look <|image|> then <|image|> and a much longer question follows"],
         {"padding": True, "padding_side": "left"}),
        ("multi-turn chats, left", [[image(200, 50, 3), image(60, 60, 4)], [image(99, 101, 5)]],
         [multi_turn, single_chat], {"padding": True, "padding_side": "left"}),
        ("multi-turn chats, right", [[image(200, 50, 3), image(60, 60, 4)], [image(99, 101, 5)]],
         [multi_turn, single_chat], {"padding": "longest"}),
        ("consecutive images", [[image(50, 50), image(80, 160, 1)], [image(10, 10, 2), image(300, 30, 3)]],
         ["<|image|><|image|>Compare these two", "First <|image|><|image|> end"], {"padding": True}),
        ("BOS given mid-prompt", [image(64, 64)], "Intro <|begin_of_text|><|image|>question", {}),
        ("max_length padding", [[image(64, 64)], [image(20, 64, 1)]], ["<|image|>a", "<|image|>b c d"],
         {"padding": "max_length", "max_length": 12, "padding_side": "left"}),
        ("text only", None, ["Hello world", "A longer text-only prompt here"], {"padding": True}),
        ("images only", [[image(64, 64)], [image(20, 64, 1), image(5, 5, 2)]], None, {}),
    ]


@pytest.mark.parametrize("index", range(10))
def test_matches_transformers(small, index):
    ours, theirs, _ = small
    name, images, text, kwargs = cases(ours)[index]
    out = ours(images=images, text=text, **kwargs)
    assert_same(out, transformers_call(theirs, images=images, text=text, **kwargs))
    if text is not None:
        assert ((out["input_ids"] == BOS).sum(axis=1) == 1).all(), name


def test_left_padding_and_masks(small):
    ours = small[0]
    out = ours(images=[[image(30, 30)], [image(30, 30, 1), image(150, 20, 2)]],
               text=["<|image|>x", "<|image|>a b <|image|>c"], padding=True, padding_side="left")
    ids, mask = out["input_ids"], out["cross_attention_mask"]
    assert ids.tolist() == [[128004] * 4 + [IMAGE, BOS, 87], [IMAGE, BOS, 64, 293, 220, IMAGE, 66]]
    assert out["attention_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [1] * 7]
    assert out["aspect_ratio_ids"].tolist() == [[1, 0], [1, 7]]
    # Sample 0: padding sees nothing, then the image (1 tile) from its token on; there is no second image.
    assert mask[0, :, 0].tolist() == [[0, 0, 0, 0]] * 4 + [[1, 0, 0, 0]] * 3 and not mask[0, :, 1].any()
    # Sample 1: image 0 from its token up to image 1's token; image 1 (3 tiles) from its token to the end.
    assert mask[1, :, 0, 0].tolist() == [1, 1, 1, 1, 1, 0, 0] and not mask[1, :, 0, 1:].any()
    assert mask[1, :, 1].tolist() == [[0, 0, 0, 0]] * 5 + [[1, 1, 1, 0]] * 2


@pytest.mark.parametrize("ids, spans, rows", [
    ([IMAGE, BOS, 5, 6, 7], [(0, 5)], [[1, 1, 1, 1, 1]]),
    ([BOS, 9, IMAGE, 5, 6], [(2, 5)], [[0, 0, 1, 1, 1]]),
    ([9, IMAGE, 5, IMAGE, 6, 7], [(1, 3), (3, 6)], [[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]),
    ([9, IMAGE, IMAGE, 5, 6], [(1, 5), (2, 5)], [[0, 1, 1, 1, 1], [0, 0, 1, 1, 1]]),
    ([0, 0, BOS, IMAGE, 5], [(3, 5)], [[0, 0, 0, 1, 1]]),
    ([IMAGE, IMAGE, IMAGE, 1, IMAGE, IMAGE], [(0, 4), (1, 4), (2, 4), (4, 6), (5, 6)], None),
])
def test_image_spans(ids, spans, rows):
    assert image_spans(ids, IMAGE) == spans
    if rows is not None:
        mask = cross_attention_mask(np.array([ids]), [[2] * len(spans)], IMAGE, 4)
        assert mask[0, :, :, 0].T.tolist() == rows and mask[0, :, :, 1].T.tolist() == rows
        assert not mask[..., 2:].any()


def test_cross_attention_mask_matches_transformers_on_random_ids():
    rng = random.Random(0)
    for _ in range(300):
        batch, length = rng.randint(1, 4), rng.randint(1, 24)
        ids = [[IMAGE if rng.random() < 0.3 else rng.randint(0, 9) for _ in range(length)] for _ in range(batch)]
        tiles = [[rng.randint(1, 4) for token in row if token == IMAGE] for row in ids]
        if not any(tiles):
            continue
        sparse = [hf_processing.get_cross_attention_token_mask(row, IMAGE) for row in ids]
        expected = hf_processing.convert_sparse_cross_attention_mask_to_dense(sparse, tiles, 4, length)
        np.testing.assert_array_equal(cross_attention_mask(np.array(ids), tiles, IMAGE, 4), expected)
    padded = cross_attention_mask(np.array([[IMAGE, 1]]), [[2]], IMAGE, 4, max_images=3)
    assert padded.shape == (1, 2, 3, 4) and padded.sum() == 4


def test_with_bos():
    assert with_bos("Hello", "<B>", "<|image|>") == "<B>Hello"
    assert with_bos("<|image|><|image|>Hi <|image|>", "<B>", "<|image|>") == "<|image|><|image|><B>Hi <|image|>"
    assert with_bos("x<B>y", "<B>", "<|image|>") == "x<B>y"


# ------------------------------------------------------------------------------------------------------ chat template
HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"
SYSTEM = HEADER.format("system") + "Cutting Knowledge Date: December 2023\nToday Date: {}\n\n{}<|eot_id|>"


def test_chat_template_image_prompt(small):
    ours, theirs, _ = small
    messages = chat([None, "Describe this image in two sentences"])
    prompt = ours.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == ("<|begin_of_text|>" + HEADER.format("user") + "<|image|>Describe this image in two sentences"
                      "<|eot_id|>" + HEADER.format("assistant"))
    assert theirs.apply_chat_template(messages, add_generation_prompt=True) == prompt
    ids = [BOS, 128006, 882, 128007, 271, IMAGE, 75885, 420, 2217, 304, 1403, 23719, 128009, 128006, 78191, 128007, 271]
    assert ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=True) == ids
    # No double BOS on any path: transformers' tokenizer template, and the processor on the rendered prompt.
    assert theirs.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True) == ids
    assert ours(images=image(30, 30), text=prompt)["input_ids"].tolist() == [ids]


def test_chat_template_text_only_and_system(small):
    ours, theirs, _ = small
    text_only = [{"role": "user", "content": "Hi"}]
    expected = "<|begin_of_text|>" + SYSTEM.format("26 Jul 2024", "") + HEADER.format("user") + "Hi<|eot_id|>"
    assert ours.apply_chat_template(text_only) == expected == theirs.apply_chat_template(text_only)
    assert "Today Date: 01 Jan 2025\n" in ours.apply_chat_template(text_only, date_string="01 Jan 2025")
    with_system = [{"role": "system", "content": "  Be brief.  "}, *chat([None, "What?"])]
    expected = ("<|begin_of_text|>" + SYSTEM.format("26 Jul 2024", "Be brief.") + HEADER.format("user")
                + "<|image|>What?<|eot_id|>" + HEADER.format("assistant"))
    assert ours.apply_chat_template(with_system, add_generation_prompt=True) == expected
    assert theirs.apply_chat_template(with_system, add_generation_prompt=True) == expected


def test_chat_template_multi_turn_and_batch(small):
    ours, theirs, _ = small
    messages = chat(["Q1 ", None], ["A1"], ["Q2"])
    expected = ("<|begin_of_text|>" + HEADER.format("user") + "Q1 <|image|><|eot_id|>" + HEADER.format("assistant")
                + "A1<|eot_id|>" + HEADER.format("user") + "Q2<|eot_id|>")
    assert ours.apply_chat_template(messages) == expected == theirs.apply_chat_template(messages)
    both = ours.apply_chat_template([messages, chat([None, "x"])], add_generation_prompt=True, tokenize=True)
    assert len(both) == 2 and both[0][0] == BOS and both[1][-4:] == [128006, 78191, 128007, 271]


def test_chat_template_tools(small):
    ours, theirs, _ = small
    tool = {"type": "function", "function": {"name": "zoom", "description": "Zoom in", "parameters": {}}}
    messages = [{"role": "user", "content": "Zoom please"},
                {"role": "assistant", "tool_calls": [{"function": {"name": "zoom", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": {"ok": True}}]
    prompt = ours.apply_chat_template(messages, tools=[tool])
    assert prompt == theirs.apply_chat_template(messages, tools=[tool])
    assert "Environment: ipython\n" in prompt and '"name": "zoom"' in prompt
    assert prompt.endswith(HEADER.format("assistant") + '{"name": "zoom", "parameters": {"x": 1}}<|eot_id|>'
                           + HEADER.format("ipython") + '{"ok": true}<|eot_id|>')


# ------------------------------------------------------------------------------------------------------ loading, text
def test_from_pretrained_round_trip(small):
    ours, _, directory = small
    loaded = lj.Processor.from_pretrained(directory)
    assert loaded.image_processor == ours.image_processor and loaded.chat_template == ours.chat_template
    text = ["<|image|>Round trip, ünïcode 🙂", "<|image|>two"]
    images = [[image(20, 20)], [image(40, 20, 1)]]
    assert_same(loaded(images=images, text=text, padding=True), ours(images=images, text=text, padding=True))


def test_pickles_for_data_loader_workers(small):
    ours = small[0]
    copy = pickle.loads(pickle.dumps(ours))
    kwargs = dict(images=[[image(40, 90)]], text=["<|image|>same after pickling"])
    assert_same(copy(**kwargs), ours(**kwargs))


def test_ids_decode_and_attributes(small):
    ours = small[0]
    assert (ours.image_token_id, ours.bos_token_id) == (IMAGE, BOS)
    assert (ours.eos_token_id, ours.pad_token_id) == (128009, 128004)
    assert (ours.eot_token_id, ours.eom_token_id, ours.end_of_text_token_id, ours.python_tag_token_id) == (
        128009, 128008, 128001, 128010)
    assert (ours.start_header_token_id, ours.end_header_token_id) == (128006, 128007)
    assert ours.stop_token_ids == (128001, 128008, 128009)
    ids = ours(text="Hello world")["input_ids"]
    assert ids.tolist() == [[BOS, 9906, 1917]]
    assert ours.decode(ids[0]) == "<|begin_of_text|>Hello world"
    assert ours.batch_decode(ids, skip_special_tokens=True) == ["Hello world"]


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("images, text, kwargs, error, message", [
    (None, None, {}, ValueError, "give text, images or both"),
    ([image(9, 9), image(9, 9)], "<|image|>one token", {}, ValueError, r"per prompt \[1\] do not match .* \[2\]"),
    ([[image(9, 9)], [image(9, 9)]], ["<|image|>a", "b"], {}, ValueError, "cannot mix samples with and without"),
    ([[image(9, 9)], []], ["<|image|>a", "b"], {}, ValueError, "cannot mix samples with and without"),
    (None, "<|image|>where is it?", {}, ValueError, "no images were given"),
    (image(9, 9), "no image token", {}, ValueError, "put one <|image|> in the prompt"),
    ([image(9, 9), image(9, 9)], ["<|image|>a", "<|image|>b"], {}, ValueError, "one list per prompt"),
    ([[image(9, 9)], [image(9, 9)]], ["<|image|>a", "<|image|>a b c"], {}, ValueError, "pass padding=True"),
    (image(9, 9), "text <|image|>", {"truncation": True, "max_length": 1}, ValueError, "increase max_length"),
    (None, 3, {}, ValueError, "text must be a string or a non-empty list of strings"),
    (None, "x", {"padding_side": "middle"}, ValueError, "padding_side must be"),
    (None, "x", {"return_tensors": "pt"}, ValueError, "results are numpy arrays"),
    ([[image(9, 9)], [image(0, 3)]], ["<|image|>a", "<|image|>b"], {"padding": True}, ValueError,
     "sample 1, image 0: .*zero-sized side"),
    ("/no/such/picture.png", "<|image|>a", {}, FileNotFoundError, "sample 0, image 0: .*picture.png' does not exist"),
])
def test_bad_calls(small, images, text, kwargs, error, message):
    with pytest.raises(error, match=message):
        small[0](images=images, text=text, **kwargs)


@pytest.mark.parametrize("messages, message", [
    ("just text", "expected a non-empty list of messages"),
    ([{"content": "no role"}], "message 0: expected a dict with a string 'role'"),
    ([{"role": "system", "content": [{"type": "text", "text": "x"}]}], "system message needs string content"),
    ([{"role": "user", "content": [{"type": "video"}]}], r"message 0, part 0: expected \{'type'"),
    ([{"role": "user", "content": [{"type": "text"}]}], "a text part needs a string 'text'"),
    ([{"role": "assistant", "tool_calls": [{"function": {}}, {"function": {}}]}], "only supports single tool-calls"),
])
def test_bad_conversations(small, messages, message):
    with pytest.raises(ValueError, match=message):
        small[0].apply_chat_template(messages)


def test_bad_directories(tmp_path, small):
    with pytest.raises(FileNotFoundError, match="processor directory not found: .*nowhere"):
        lj.Processor.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        lj.Processor.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (broken / name).write_bytes((small[2] / name).read_bytes())
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load the tokenizer in .*broken"):
        lj.Processor.from_pretrained(broken)
