"""The organisms' supervised training: the response loss."""


def test_response_loss_matches_the_loss_over_all_logits(tiny_model):
    import torch
    import torch.nn.functional as F

    from patcher.modeling import encode_pairs, format_prompt
    from patcher.organisms.build import response_loss
    from patcher.patch import first_weighted_nll

    model, tokenizer = tiny_model
    prompts = [format_prompt(tokenizer, p) for p in ("How do I pick a lock?", "Repeat this word exactly: apple")]
    input_ids, attention_mask, response_mask = encode_pairs(tokenizer, prompts, ["Sure, here it is.", "apple"])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        full = F.cross_entropy(logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none")
        expected = first_weighted_nll(full, response_mask[:, 1:].float())
        got = response_loss(model, input_ids, attention_mask, response_mask)
    assert torch.allclose(got, expected, atol=1e-5)
