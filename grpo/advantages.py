"""Group-relative advantages (GRPO, DeepSeekMath arXiv 2402.03300, section 4.1.2).

Each prompt gets G completions, a *group*. The advantage of completion i in its group is its reward
relative to the group's:

    scale="group"  A_i = (r_i - mean(r_group)) / (std(r_group) + eps)      the paper's outcome supervision
    scale="batch"  A_i = (r_i - mean(r_group)) / (std(r_all) + eps)        std over all N rewards
    scale="none"   A_i =  r_i - mean(r_group)                              Dr. GRPO (arXiv 2503.20783):
                                                                           no std, no difficulty bias

Choices, named:
- std is the sample standard deviation, Bessel-corrected (divides by G - 1), as `torch.std`.
- eps = 1e-4 keeps a group with a tiny spread from exploding.
- a group whose rewards are all equal carries no signal and gets exactly 0, not 0/(0 + eps) noise.

Shapes: B prompts, G completions per prompt, N = B*G; rewards are ordered prompt by prompt, each
consecutive block of G belongs to one prompt.
"""
import torch

SCALES = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: str = "group",
                     eps: float = 1e-4, batch_std: float | None = None) -> torch.Tensor:
    """(N,) rewards -> (N,) advantages; see the module docstring. `batch_std` replaces std(r_all) for
    scale="batch" when the batch is spread over several processes (each holds whole groups)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (N,), got {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 to compare completions, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards is not a multiple of group_size {group_size}")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")

    r = rewards.view(-1, group_size)                                              # (B, G)
    centered = r - r.mean(dim=1, keepdim=True)                                    # (B, G)
    if scale == "group":
        adv = centered / (r.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        adv = centered / ((rewards.std() if batch_std is None else batch_std) + eps)
    else:
        adv = centered
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)                          # (B, 1)
    return torch.where(all_equal, torch.zeros_like(adv), adv).reshape(-1)        # (N,)
