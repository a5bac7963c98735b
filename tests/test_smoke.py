import torch

import dode
from dode.denoisers import gaussian
from dode.schedules import karras


def test_fit_improves_ddim_on_gaussian():
    den = gaussian(torch.zeros(4), torch.diag(torch.tensor([0.5, 1.0, 2.0, 0.1])))
    noise = torch.randn(64, 4, dtype=torch.float64)
    s = karras(4)
    lam = dode.fit_lambdas(den, "ddim", noise, s)
    exact = den.exact_solution(noise * 80.0, 80.0, 0.0)
    base = dode.sample(den, "ddim", noise, s)
    fitted = dode.sample(den, "ddim", noise, s, lam)
    assert lam.shape == (4,) and lam[0] == 0
    assert ((fitted - exact) ** 2).mean() < 0.5 * ((base - exact) ** 2).mean()
