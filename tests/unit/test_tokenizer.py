"""The locally trained tokenizer keeps the reasoning/answer tags as text and the chat format intact."""

from dvr1.models.tokenizer import chat_prompt, decode_response, special_ids, train_tokenizer


def test_tags_survive_decoding_and_stop_token_is_cut():
    tok = train_tokenizer(["<think>the clip runs backwards</think><answer>B</answer>"] * 30, 350)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok("<think>the clip runs backwards</think><answer>B</answer>", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids  # one token each
    assert decode_response(tok, ids + [eos], (eos,)) == "<think>the clip runs backwards</think><answer>B</answer>"
    # a sampled placeholder token stays visible (the format reward must see it)
    video = special_ids(tok)["video"]
    assert decode_response(tok, [video] + ids, (eos,)).startswith("<|video_pad|><think>")


def test_chat_prompt_round_trip_and_video_token_count():
    tok = train_tokenizer(["Is it reversed? A. yes B. no"] * 30, 350)
    ids = special_ids(tok)
    prompt = chat_prompt("Is it reversed?", 5)
    enc = tok(prompt, add_special_tokens=False)["input_ids"]
    assert enc.count(ids["video"]) == 5 and enc.count(ids["vision_start"]) == 1
    assert tok.decode(enc) == prompt
    assert prompt.endswith("<|im_start|>assistant\n")
