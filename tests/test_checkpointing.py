"""Checkpoint identity: the weights digest that ties fine-tuning runs to their pretrained checkpoint."""

from __future__ import annotations

import torch


def test_weights_digest_follows_the_weights_not_the_file(tmp_path):
    from piwsl.checkpointing import weights_digest

    def save(name: str, weight: torch.Tensor, **extra) -> str:
        path = tmp_path / name
        content = {"state_dict": {"layer.weight": weight}, "normalizers": {"energy": {"mean": torch.tensor(1.0)}}}
        torch.save(content | {"config": {"timestamp_id": name}, "optimizer": {"lr": 1e-3}} | extra, path)
        return str(path)

    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    first = weights_digest(save("a.pt", weight))
    assert weights_digest(save("b.pt", weight.clone())) == first  # other config and timestamp, same weights
    assert weights_digest(save("c.pt", weight.reshape(3, 2))) != first  # same bytes, other shape
    assert weights_digest(save("d.pt", weight.double())) != first
    changed = weight.clone()
    changed[1, 2] += 1e-6
    assert weights_digest(save("e.pt", changed)) != first
    assert weights_digest(save("f.pt", weight, ema={"shadow_params": [weight]})) != first
