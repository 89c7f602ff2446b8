"""The semantic-ID tokenizer: vocabulary, prompts, save/load, decoding items."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from atspeed.rec.tokenizer import (
    SPECIAL_TOKENS,
    build_tokenizer,
    decode_items,
    encode_history,
    encode_prompts,
    history_text,
    item_vocab,
)

TOY = {0: ("<a_2>", "<b_10>", "<c_0>", "<d_1>"), 1: ("<a_2>", "<b_9>", "<c_3>", "<d_1>")}


def test_vocabulary_is_special_tokens_then_codes_level_by_level():
    tok = build_tokenizer(TOY)
    order = sorted(tok.get_vocab(), key=tok.get_vocab().get)
    assert order == [*SPECIAL_TOKENS, "<a_2>", "<b_9>", "<b_10>", "<c_0>", "<c_3>", "<d_1>"]


def test_special_token_ids_are_fixed():
    tok = build_tokenizer(TOY)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)


def test_concatenated_and_space_separated_codes_tokenize_alike():
    tok = build_tokenizer(TOY)
    assert tok("<a_2><b_10><c_0><d_1>").input_ids == tok("<a_2> <b_10>  <c_0>\n<d_1>").input_ids


def test_tokenizer_adds_bos_and_marks_unknown_text_as_unk():
    tok = build_tokenizer(TOY)
    assert tok("<a_2>junk<z_1>").input_ids == [1, 4, 3, 3]


def test_tokenizer_gives_no_token_type_ids():
    assert set(build_tokenizer(TOY)("<a_2>").keys()) == {"input_ids", "attention_mask"}


def test_prompt_is_bos_then_each_items_codes_oldest_first():
    tok = build_tokenizer(TOY)
    vocab = item_vocab(tok, TOY)
    expected = tok.convert_tokens_to_ids(["<s>", *TOY[1], *TOY[0]])
    assert encode_history(vocab, [1, 0]) == expected


def test_empty_history_is_just_bos():
    tok = build_tokenizer(TOY)
    assert encode_history(item_vocab(tok, TOY), []) == [tok.bos_token_id]


def test_encode_prompts_matches_the_tokenizer_on_history_text(synthetic, tokenizer, vocab):
    histories = [[0, 5, 7], [3], []]
    ids, mask = encode_prompts(vocab, histories)
    batch = tokenizer([history_text(synthetic.index, h) for h in histories], padding=True, return_tensors="pt")
    assert torch.equal(ids, batch.input_ids)
    assert torch.equal(mask, batch.attention_mask)


def test_prompts_are_left_padded(vocab):
    ids, mask = encode_prompts(vocab, [[0, 1], [2]])
    assert ids[1, :4].tolist() == [vocab.pad_token_id] * 4
    assert mask.tolist() == [[1] * 9, [0] * 4 + [1] * 5]


def test_prompts_pad_up_to_a_multiple_of_the_bucket(vocab):
    ids, mask = encode_prompts(vocab, [[0, 1], [2]], bucket=8)
    assert ids.shape == (2, 16)
    assert torch.equal(ids[:, -9:], encode_prompts(vocab, [[0, 1], [2]])[0])
    assert mask.sum(-1).tolist() == [9, 5]


def test_decode_gives_back_the_codes_as_text(synthetic, tokenizer, vocab):
    ids = encode_history(vocab, [4, 2])
    assert tokenizer.decode(ids, skip_special_tokens=True) == history_text(synthetic.index, [4, 2])


def test_save_and_load_round_trip_keeps_ids_specials_and_padding(tmp_path, synthetic, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [history_text(synthetic.index, h) for h in ([1, 2, 3], [9])]
    assert loaded(texts, padding=True).input_ids == tokenizer(texts, padding=True).input_ids
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.padding_side == "left"
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<s>", "</s>")


def test_decode_items_maps_generated_tails_to_items(vocab):
    tails = vocab.tokens[[7, 0, 42]]  # [3, 4]
    assert decode_items(vocab, tails) == [7, 0, 42]


def test_decode_items_ignores_tokens_after_the_item(vocab):
    tails = torch.cat([vocab.tokens[[5]], torch.tensor([[vocab.eos_token_id]])], 1)  # [1, 5]
    assert decode_items(vocab, tails) == [5]


def test_decode_items_gives_none_for_invalid_or_short_tails(vocab):
    wrong_order = vocab.tokens[3].flip(0)
    assert decode_items(vocab, [wrong_order.tolist(), vocab.tokens[3, :3].tolist()]) == [None, None]


def test_shared_semantic_id_decodes_to_the_lowest_item():
    index = {0: TOY[0], 1: TOY[1], 2: TOY[1]}
    vocab = item_vocab(build_tokenizer(index), index)
    assert decode_items(vocab, vocab.tokens[[2]]) == [1]
