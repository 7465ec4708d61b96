"""Evaluation on the validation split during and after training."""

from __future__ import annotations

import math


def evaluate(model, batches, *, device: str, autocast, task: str) -> dict:
    """Mean loss over every label token (every row for classification), plus
    perplexity, or accuracy and macro-F1 for classification. The loss is the
    task's alone, without a term a method adds in training (AdaLoRA's
    orthogonality penalty), so every method's eval loss compares."""
    import torch

    from tuning.data.sft import IGNORE_INDEX
    from tuning.loss import task_model

    was_training = model.training
    model.eval()
    loss_sum, weight_sum, predicted, expected = 0.0, 0, [], []
    with torch.no_grad():
        for batch in batches:
            inputs = {key: value.to(device) for key, value in batch.items()}
            with autocast():
                output = task_model(model)(**inputs)
            labels = inputs["labels"]
            if task == "classify":
                weight = labels.shape[0]
                predicted += output.logits.argmax(dim=-1).tolist()
                expected += labels.tolist()
            else:
                weight = int((labels[:, 1:] != IGNORE_INDEX).sum())  # causal LMs predict the next token
            loss_sum += output.loss.item() * weight
            weight_sum += weight
    model.train(was_training)
    eval_loss = loss_sum / max(weight_sum, 1)
    result = {"eval_loss": round(eval_loss, 6)}
    if task == "classify":
        from tuning.metrics import accuracy, macro_f1

        result.update(accuracy=round(accuracy(predicted, expected), 6), f1=round(macro_f1(predicted, expected), 6))
    else:
        result["perplexity"] = round(math.exp(min(eval_loss, 50.0)), 4)
    return result
