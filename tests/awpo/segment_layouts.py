"""Random shared-prompt layouts as `awpo.policy_update.pack()` lays them out, for the attention tests."""
import random

import torch

from awpo import attention


def random_layout(seed, groups=3, max_prompt=150, max_response=90, responses=(1, 4), first_group_responses=None):
    """Per group a prompt of 1..max_prompt tokens, then `responses` (an inclusive range) responses of
    1..max_response tokens each; `first_group_responses` fixes the first group's count (e.g. 1: a group
    whose prompt has a single response)."""
    rng = random.Random(seed)
    segment, parent, name = [], [], 0
    for g in range(groups):
        prompt = name
        segment += [prompt] * rng.randint(1, max_prompt)
        parent += [prompt] * (len(segment) - len(parent))
        count = first_group_responses if g == 0 and first_group_responses is not None else rng.randint(*responses)
        for _ in range(count):
            name += 1
            length = rng.randint(1, max_response)
            segment += [name] * length
            parent += [prompt] * length
        name += 1
    return attention.SegmentLayout(torch.tensor(segment), torch.tensor(parent))
