"""The tiny Cosmos Policy, trained with the real objective, memorizes one batch and samples it back."""

import torch

from cosmos_lit.registry import build
from cosmos_lit.spec import DataSpec


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    spec = DataSpec(cameras=("top",), proprio_dim=3, action_dim=2, chunk_size=4, image_size=16)
    task = build({"name": "cosmos_policy"}, "task", spec=spec.to_dict(), model={
        "backbone": {"name": "cosmos_predict2_tiny", "num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 32},
        "image_encoder": {"name": "wan2.1_tiny", "normalization": "none", "sequence_form": "per_image"},
    })
    g = torch.Generator().manual_seed(1)
    b = 2
    batch = {
        "images": torch.rand(b, 2, 3, 16, 16, generator=g) * 2 - 1,
        "proprio": torch.rand(b, 3, generator=g) * 2 - 1,
        "future_proprio": torch.rand(b, 3, generator=g) * 2 - 1,
        "actions": torch.rand(b, 4, 2, generator=g) * 2 - 1,
        "value": torch.rand(b, generator=g) * 2 - 1,
        "sample_type": torch.zeros(b, dtype=torch.long),
        "instruction": ["pick up the cube", "open the drawer"],
    }
    steps = 800
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (steps - s) / 200))  # constant, then to 0
    task.train()
    for _ in range(steps):
        loss, _ = task._loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    task.eval()
    before = (torch.zeros_like(batch["actions"]) - batch["actions"]).abs().mean().item()
    out = task.inference_model.predict(batch["images"][:, :1], batch["proprio"], batch["instruction"], seed=0)
    l1 = (out["actions"] - batch["actions"]).abs().mean().item()
    assert before > 0.3  # the targets are far from a trivial prediction
    assert l1 < 0.05, f"normalized action L1 after overfitting one batch: {l1:.4f}"
    assert (out["future_proprio"] - batch["future_proprio"]).abs().mean().item() < 0.1
