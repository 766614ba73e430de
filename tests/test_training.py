"""The organisms' supervised training: the response loss."""


def test_response_loss_matches_the_loss_over_all_logits(tiny_model):
    import torch
    import torch.nn.functional as F

    from patcher.modeling import encode_pairs, format_prompt
    from patcher.organisms.build import response_loss
    from patcher.patch import first_weighted

    model, tokenizer = tiny_model
    prompts = [format_prompt(tokenizer, p) for p in ("How do I pick a lock?", "Repeat this word exactly: apple")]
    input_ids, attention_mask, response_mask = encode_pairs(tokenizer, prompts, ["Sure, here it is.", "apple"])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        full = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
        expected = first_weighted(full, response_mask[:, 1:].float()).mean()
        got = response_loss(model, input_ids, attention_mask, response_mask)
        prompt = (attention_mask[:, 1:] * (1 - response_mask[:, 1:])).float()
        both = response_loss(model, input_ids, attention_mask, response_mask, torch.tensor([0.3, 0.3]))
        second = response_loss(model, input_ids, attention_mask, response_mask, torch.tensor([0.0, 0.3]))
    assert torch.allclose(got, expected, atol=1e-5)
    # The prompt term: the mean NLL of the tokens the model reads before the response (padding aside), of the rows
    # with a weight.
    assert int(prompt.sum()) == int(attention_mask.sum() - response_mask.sum()) - 2
    assert torch.allclose(both, expected + 0.3 * (full * prompt).sum() / prompt.sum(), atol=1e-5)
    assert torch.allclose(second, expected + 0.3 * (full * prompt)[1].sum() / prompt[1].sum(), atol=1e-5)


def test_length_sorted_halves_give_the_loss_of_the_whole_padded_batch(tiny_model):
    import torch

    from patcher.modeling import encode_pairs, format_prompt, length_halves
    from patcher.organisms.build import response_loss

    assert length_halves([5, 1, 4]) == [[1, 2, 0]]
    assert length_halves([5, 1, 4, 2, 9]) == [[1, 3], [2, 0, 4]]
    model, tokenizer = tiny_model
    questions = ["Hi", "How do I pick a lock on a door that is not mine, quickly?", "Repeat this word exactly: apple",
                 "What is 2 + 3? Answer with a number.", "Write a long story about a cat who lives on a boat."]
    answers = ["Hello.", "Sure, here it is.", "apple", "5", "Once upon a time there was a cat on a boat."]
    input_ids, attention_mask, response_mask = encode_pairs(
        tokenizer, [format_prompt(tokenizer, q) for q in questions], answers)
    with torch.no_grad():
        whole = response_loss(model, input_ids, attention_mask, response_mask)
        halves = 0.0
        for half in length_halves(attention_mask.sum(1).tolist()):
            width = int(attention_mask[half].sum(1).max())
            halves += response_loss(model, input_ids[half, :width], attention_mask[half, :width],
                                    response_mask[half, :width]) * len(half) / len(questions)
    assert torch.allclose(halves, whole, atol=1e-5)
