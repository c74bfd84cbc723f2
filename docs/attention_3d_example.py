"""The worked example of docs/attention-3d.md: one text token, 2 latent frames x 2 tokens."""

import torch

from attnlab.core.joint_math import ReplaceOp, edited_attention
from attnlab.core.joint_sites import TokenLayout

# 1 text token first, then 2 latent frames x 2 tokens; two query rows of frame 0
p = torch.tensor(
    [
        [0.2, 0.3, 0.1, 0.25, 0.15],  # query 1 (video token 0, frame 0)
        [0.1, 0.5, 0.2, 0.1, 0.1],
    ],
    dtype=torch.float64,
)  # query 2 (video token 1, frame 0)
S = 5
rows = torch.full((S, S), 0.2, dtype=torch.float64)
rows[1:3] = p  # video tokens 0, 1 = seq 1, 2
q = rows.log()[None, None]
k = torch.eye(S, dtype=torch.float64)[None, None]
v = k
lay = TokenLayout(frames=2, per_frame=2, text="first")
for name, ops in (
    ("plain", []),
    ("identity", [ReplaceOp(torch.eye(2))]),
    ("ones", [ReplaceOp(torch.full((2, 2), 0.5))]),
):
    out, mass, text = edited_attention(q, k, v, lay, scale=1.0, replace=ops, observe=True)
    print(name, "rows:", [[round(x, 4) for x in r] for r in out[0, 0, 1:3].tolist()])
    print(
        "   per-query frame mass (renormalised):",
        [[round(x, 4) for x in r] for r in mass[0, 0, :2].tolist()],
        "text:",
        [round(x, 4) for x in text[0, 0, :2].tolist()],
    )
    print(
        "   A[0, :] =",
        [round(x, 4) for x in mass[0, 0, :2].mean(0).tolist()],
        "text_mass[0] =",
        round(text[0, 0, :2].mean().item(), 4),
    )
