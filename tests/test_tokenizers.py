import open_clip
import torch

from multimodal.tokenizers import ByteTokenizer, ClipTokenizer, get_tokenizer


def test_clip_tokenizer_matches_open_clip():
    texts = ["a photo of a cat.", "A RED circle in the top left", "x " * 100]
    ours = ClipTokenizer().batch(texts, 77)
    assert torch.equal(ours, open_clip.tokenize(texts))
    tok = get_tokenizer("clip")
    assert tok.decode(tok.encode("a red circle")) == "a red circle"


def test_byte_tokenizer_roundtrip_and_batch():
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("héllo 12+3=15")) == "héllo 12+3=15"
    b = tok.batch(["ab", "abcdef"], 4)
    assert b.tolist() == [[97, 98, 256, 0], [97, 98, 99, 256]]


def test_gpt2_tokenizer_from_files(gpt2_dir):
    tok = get_tokenizer("gpt2", gpt2_dir)
    text = "the cat sat on the mat"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text)
    assert tok.encode("<|endoftext|>") == [tok.eot_id]
