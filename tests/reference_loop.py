"""The baseline to beat, in the style of the reference code (xsbert): one backward pass per embedding dimension.

For each path node batch it runs one forward with grad, then for every output dimension k one
`torch.autograd.grad(emb[:, k].sum(), x, retain_graph=True)`, multiplies by (x − r) and integrates.
"""
import torch


def per_dimension_loop(f, x, r, alphas, weights):
    """G [D, S] by D backward passes through all path nodes at once."""
    alphas = torch.as_tensor(alphas, dtype=x.dtype)
    weights = torch.as_tensor(weights, dtype=x.dtype)
    delta = x - r
    xs = (r + alphas.view(-1, 1, 1) * delta).detach().requires_grad_(True)
    with torch.enable_grad():
        emb = f(xs)  # [N, D]
        D = emb.shape[-1]
        G = torch.zeros(D, x.shape[1], dtype=torch.float64)
        for k in range(D):
            (g,) = torch.autograd.grad(emb[:, k], xs, grad_outputs=weights, retain_graph=k < D - 1)
            G[k] = (g * delta).sum(-1).sum(0).double()
    return G
