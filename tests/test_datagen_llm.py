"""LLM client, captions/tags, prompts and VLM judges against a real local HTTP server."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openai")

from synth_sod.data_generation.llm import LLMError, OpenAIChatClient, RetryPolicy, message
from tests.datagen_server import ChatServer, images_of, text_of

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


def client_for(server: ChatServer, retry: RetryPolicy = FAST) -> OpenAIChatClient:
    return OpenAIChatClient("test-model", base_url=server.base_url, api_key="k", retry=retry,
                            timeout=10)


def test_retries_429_and_500_then_answers():
    with ChatServer(lambda req: "hello") as server:
        server.script = [429, 500]
        answer = client_for(server).chat([message("user", "hi")], max_tokens=7, temperature=0.2)
    assert answer == "hello"
    assert server.statuses == [429, 500, 200]
    assert server.requests[-1]["max_tokens"] == 7
    assert server.requests[-1]["temperature"] == 0.2
    assert server.requests[-1]["model"] == "test-model"


def test_gives_up_after_max_attempts_with_clear_error():
    with ChatServer(lambda req: "never") as server:
        server.script = [500, 500, 500, 500, 500]
        with pytest.raises(LLMError, match="gave up after 4 attempts"):
            client_for(server).chat([message("user", "hi")])
    assert len(server.requests) == 4


def test_client_error_is_not_retried():
    with ChatServer(lambda req: "x") as server:
        server.script = [400]
        with pytest.raises(LLMError, match="HTTP 400"):
            client_for(server).chat([message("user", "hi")])
    assert len(server.requests) == 1


def test_images_are_sent_as_jpeg_data_urls():
    image = Image.fromarray(np.full((20, 30, 3), (200, 10, 10), np.uint8))
    with ChatServer(lambda req: "ok") as server:
        client_for(server).chat([message("user", "what is this", [image])])
    (url,) = images_of(server.requests[0])
    assert url.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (30, 20)
    assert np.asarray(decoded)[10, 15, 0] > 150  # still red


def test_missing_key_and_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        OpenAIChatClient("gpt-4o")


def _images(folder, n):
    (folder / "images").mkdir(parents=True)
    paths = []
    for i in range(n):
        p = folder / "images" / f"im{i}.jpg"
        Image.fromarray(np.full((16, 24, 3), 40 * i, np.uint8)).save(p)
        paths.append(p)
    return paths


def test_tags_resume_and_cleanup(tmp_path):
    from synth_sod.data_generation.captions import describe_images, read_records

    paths = _images(tmp_path / "DUTS-TR", 3)
    out = tmp_path / "tags.json"
    with ChatServer(lambda req: "  The Golden Retriever!  dog ") as server:
        server.script = [429]
        describe_images("tag", [tmp_path / "DUTS-TR"], out, client_for(server), concurrency=2,
                        save_interval=1)
        first = len(server.requests)
        describe_images("tag", [tmp_path / "DUTS-TR"], out, client_for(server), concurrency=2)
    records = json.loads(out.read_text())
    assert sorted(r["image_path"] for r in records) == sorted(str(p) for p in paths)
    assert {r["tag"] for r in records} == {"the golden"}  # lower case, two words, no punctuation
    assert first == 4  # 3 images + one retried 429
    assert len(server.requests) == first  # the rerun found everything done
    assert read_records(out, "tag")[str(paths[0])] == "the golden"
    assert server.requests[-1]["max_tokens"] == 5


def test_captions_sharded_files_are_merged_on_read(tmp_path):
    from synth_sod.data_generation.captions import describe_images, read_records
    from synth_sod.data_generation.sharding import Shard

    paths = _images(tmp_path / "DIS-TR", 5)
    out = tmp_path / "captions.json"
    with ChatServer(lambda req: "\u201cA grey square.\u201d") as server:
        for i in range(2):
            describe_images("caption", [tmp_path / "DIS-TR"], out, client_for(server),
                            shard=Shard(i, 2))
    assert not out.exists()
    assert len(list(tmp_path.glob("captions.shard-*-of-00002.json"))) == 2
    merged = read_records(out, "caption")
    assert set(merged) == {str(p) for p in paths}
    assert set(merged.values()) == {"A grey square."}


def test_prompt_generation_appends_only_missing(tmp_path):
    from synth_sod.data_generation.prompts import ensure_prompts, load_classes

    cls = next(c for c in load_classes() if c.folder == "goldfish")
    answers = iter(['Here you go:\n```json\n["a goldfish in a bowl", "two goldfish near '
                    'weeds"]\n```', '["a goldfish in a pond at dusk", "a goldfish in a bowl"]'])
    with ChatServer(lambda req: next(answers)) as server:
        path = tmp_path / "goldfish" / "prompts.txt"
        got = ensure_prompts(cls, path, 3, client_for(server), batch=2)
        again = ensure_prompts(cls, path, 3, client_for(server), batch=2)
    assert got == ["a goldfish in a bowl", "two goldfish near weeds",
                   "a goldfish in a pond at dusk"]
    assert again == got
    assert len(server.requests) == 2  # second call found 3 prompts on disk
    assert "goldfish" in text_of(server.requests[0])
    assert path.read_text().splitlines() == got


def test_vlm_judges_over_http():
    from synth_sod.data_generation.filters import GemmaMaskArtifactFilter, GemmaSemanticFilter
    from synth_sod.data_generation.filters.base import Sample

    class Fixed(Sample):
        pass

    sample = Sample.__new__(Fixed)
    sample.__dict__.update(image=np.zeros((40, 60, 3), np.uint8),
                           mask=np.zeros((40, 60), np.uint8), category="c", sample_id="0")
    replies = iter(['{"has_salient_object": true, "covers_object": true, "confidence": 0.9}',
                    'Sure! {"has_salient_object": true, "covers_object": false, '
                    '"confidence": 0.95}',
                    '{"is_clean_mask": true, "confidence": 0.5}',
                    "no idea"])
    with ChatServer(lambda req: next(replies)) as server:
        sem = GemmaSemanticFilter(client=client_for(server), target_size=120)
        art = GemmaMaskArtifactFilter(client=client_for(server))
        ok, no_cover, low_conf, garbage = (sem.check(sample), sem.check(sample),
                                           art.check(sample), art.check(sample))
    assert ok.passed and ok.score == pytest.approx(0.9)
    assert not no_cover.passed and "covers_object" in no_cover.reason
    assert not low_conf.passed and "confidence 0.50 < 0.7" in low_conf.reason
    assert not garbage.passed and garbage.score == 0.0
    side_by_side = Image.open(io.BytesIO(base64.b64decode(
        images_of(server.requests[0])[0].split(",", 1)[1])))
    assert side_by_side.size == (120, 40)  # [image | overlay], long side = target_size


def test_prompts_step_with_class_weights_and_shards(tmp_path):
    from synth_sod.data_generation.prompts import generate_prompts, load_classes, read_prompts
    from synth_sod.data_generation.sharding import Shard

    classes = [c for c in load_classes() if c.folder in ("tench", "goldfish", "cock")]

    def answer(req):
        n = int(text_of(req).split("Write ", 1)[1].split()[0])
        label = text_of(req).split("each showing ", 1)[1].split(" (")[0]
        return json.dumps([f"{label} scene number {i}" for i in range(n)])

    with ChatServer(answer) as server:
        manifests = [generate_prompts(classes, tmp_path, client_for(server), num_prompts=2,
                                      weights={"goldfish": 3}, shard=Shard(i, 2), concurrency=2)
                     for i in range(2)]
    counts = {c.folder: len(read_prompts(tmp_path / c.folder / "prompts.txt")) for c in classes}
    assert counts == {"tench": 2, "goldfish": 3, "cock": 2}
    assert sum(m.done for m in manifests) == 3 and not any(m.failed for m in manifests)
    assert read_prompts(tmp_path / "cock" / "prompts.txt")[0] == "cock scene number 0"


def _tiny_llava(folder):
    """A tiny LLaVA (CLIP vision + Llama text) with a word-level tokenizer, saved locally."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip import CLIPImageProcessorPil

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "user", "system", "assistant", ":",
             "describe", "this", "dog", "cat"]
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>",
                                  extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
                "{% endfor %}{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32},
                                              crop_size={"height": 32, "width": 32}),
        tokenizer=tok, chat_template=template, patch_size=16,
        vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=16),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, max_position_embeddings=64,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return set(words)


def test_local_vlm_backend_with_a_tiny_llava(tmp_path):
    """The transformers backend (published: Gemma-3) on a tiny image-text-to-text model."""
    from synth_sod.data_generation.captions import describe_images
    from synth_sod.data_generation.llm import TransformersVLMClient

    words = _tiny_llava(tmp_path / "vlm")
    client = TransformersVLMClient(str(tmp_path / "vlm"), dtype="float32", device_map=None)
    image = Image.fromarray(np.full((30, 40, 3), (200, 0, 0), np.uint8))
    greedy = [client.chat([message("system", "describe"), message("user", "describe this",
                                                                   [image])], max_tokens=4)
              for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0].split()
    assert set(greedy[0].split()) <= words  # decoded from the model's own vocabulary
    sampled = client.chat([message("user", "describe this", [image])], max_tokens=3,
                          temperature=0.7, top_p=0.9)
    assert 1 <= len(sampled.split()) <= 3
    (tmp_path / "DIS-TR" / "images").mkdir(parents=True)
    image.save(tmp_path / "DIS-TR" / "images" / "a.jpg")
    out = describe_images("tag", [tmp_path / "DIS-TR"], tmp_path / "tags.json", client)
    (record,) = json.loads(out.read_text())
    assert 1 <= len(record["tag"].split()) <= 2
    with pytest.raises(LLMError, match="cannot load"):
        TransformersVLMClient(str(tmp_path / "missing")).chat([message("user", "hi")])
