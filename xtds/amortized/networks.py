"""The networks of amortized inference: Su & Li's two-stage model, and a calibrated posterior.

Inputs are the simulated (or measured) observables, e.g. the 4,144 valid pixels of a normalized
powder spectrum; labels are the force constants as fractions of a reference, u = φ / φ_ref (the
training box, 0.5–1.5, maps to ±1 after centring and scaling: ``LabelScale``).

- :class:`TwoStage` (Su & Li): a fully connected variational autoencoder (P → 400 → 30 latent
  Gaussians, tanh; the decoder mirrored; KL weight 1e-6) trained on the simulations, optionally
  fine-tuned on measured spectra at a reduced learning rate, and a regressor (30 → 100 → 1000 →
  1000 → 100 → n, tanh) from the latent means to the labels. ``predict`` draws latent vectors from
  the encoder's Gaussians: the spread of the predictions is the model's.
- :class:`GaussianPosterior`: past the paper, an amortized posterior q(u | x) = N(μ(x), Σ(x))
  (Σ by its Cholesky factor) trained by maximum likelihood on the simulations (neural posterior
  estimation with a Gaussian family): its intervals are checked on held-out simulations. Its
  input is standardized pixel by pixel with the training set's mean and spread (the constants
  change a spectrum by far less than the spectrum varies across its pixels), optionally projected
  on the leading principal components and whitened; then an MLP (SiLU), trained with a one-cycle
  learning rate and clipped gradients.

Both train with Adam on minibatches, with progress bars and checkpoints (state dict + JSON, written
atomically every ``checkpoint_every`` epochs; a rerun with the same settings resumes), and save
and load as a state dict plus JSON metadata (the training set's provenance, the label scale, the
package versions).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["LabelScale", "TwoStage", "GaussianPosterior", "PosteriorEnsemble", "load", "standardized",
           "with_temperature"]


def standardized(values) -> np.ndarray:
    """Each spectrum (row of ``values`` (N, P)) as (x − mean)/std over its pixels, float32: its
    shape alone. The network input is then the same for any scale and offset of the spectrum, such
    as the source normalization's (x − mean)/(max − min), whose max and min one noisy pixel sets
    (the measured ARCS spectra's amplitude relative to the model's varies from 0.71 to 0.98 with
    temperature: docs/amortized.md)."""
    v = np.atleast_2d(np.asarray(values, dtype=np.float64))
    sd = v.std(axis=1, keepdims=True)
    if np.any(~(sd > 0)):
        raise ValueError("a spectrum with no spread (all pixels equal, or NaN) cannot be standardized")
    return ((v - v.mean(axis=1, keepdims=True)) / sd).astype(np.float32)


def _restandardize(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """:func:`standardized` on the columns ``cols`` (bool (n_in,)) of each row of a batch."""
    v = x[:, cols]
    v = (v - v.mean(1, keepdim=True)) / v.std(1, unbiased=False, keepdim=True)
    out = x.clone()
    out[:, cols] = v
    return out


def with_temperature(values, temperature, t_range) -> np.ndarray:
    """The input of a temperature-conditioned network: the pixels (N, P) and one more column, the
    temperature (N,) K mapped from ``t_range`` (low, high) to [−1, 1]. Shape (N, P + 1) float32."""
    lo, hi = (float(t) for t in t_range)
    t = (np.atleast_1d(np.asarray(temperature, dtype=float)) - 0.5 * (lo + hi)) / (0.5 * max(hi - lo, 1e-12))
    v = np.atleast_2d(np.asarray(values, dtype=np.float32))
    return np.concatenate([v, np.broadcast_to(t, (len(v),))[:, None].astype(np.float32)], 1)


@dataclass(frozen=True)
class LabelScale:
    """u = φ / φ_ref mapped to z = (u − centre) / half-width (the training box to ±1)."""

    reference: tuple
    low: float = 0.5
    high: float = 1.5

    def to_z(self, phi) -> torch.Tensor:
        u = torch.as_tensor(np.asarray(phi, dtype=float) / np.asarray(self.reference), dtype=torch.float32)
        return (u - 0.5 * (self.low + self.high)) / (0.5 * (self.high - self.low))

    def to_phi(self, z) -> np.ndarray:
        z = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
        return (z * 0.5 * (self.high - self.low) + 0.5 * (self.low + self.high)) * np.asarray(self.reference)

    def phi_scale(self) -> np.ndarray:
        """dφ/dz per constant (eV/Å²): a z interval in eV/Å²."""
        return 0.5 * (self.high - self.low) * np.abs(np.asarray(self.reference))


def _mlp(sizes, last_activation=False, act=nn.Tanh, first=()) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``act`` between them (and after the last one with
    ``last_activation``), after the modules ``first``."""
    layers = list(first)
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(act())
    return nn.Sequential(*layers)


class _VAE(nn.Module):
    def __init__(self, n_in: int, hidden: int = 400, latent: int = 30):
        super().__init__()
        self.encoder = _mlp([n_in, hidden], last_activation=True)
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = _mlp([latent, hidden, n_in])

    def encode(self, x):
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def forward(self, x, generator=None):
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decoder(z), mu, logvar


def _batches(n: int, size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + size] for i in range(0, n, size)]


class _Trainer:
    """Adam over epochs of shuffled minibatches, a progress bar, and resumable checkpoints."""

    def __init__(self, module: nn.Module, lr: float, checkpoint, checkpoint_every: int, seed: int,
                 one_cycle: tuple[int, int] | None = None, clip: float | None = None):
        """``one_cycle`` (epochs, batches per epoch): the learning rate rises to ``lr`` and anneals
        (torch's OneCycleLR, stepped per batch); ``clip``: the gradient's norm at most this."""
        self.module, self.lr, self.clip = module, lr, clip
        self.opt = torch.optim.Adam(module.parameters(), lr=lr)
        self.sched = None
        if one_cycle is not None:
            self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=lr,
                                                             total_steps=max(1, one_cycle[0] * one_cycle[1]))
        self.checkpoint, self.every = checkpoint, checkpoint_every
        self.gen = torch.Generator().manual_seed(seed)
        self.start, self.history = 0, []
        if checkpoint and os.path.exists(checkpoint):
            try:  # tensors and plain data only: a file planted at the path cannot run code
                state = torch.load(checkpoint, weights_only=True)
            except Exception as err:
                raise ValueError(f"the training checkpoint {checkpoint} is not one xtds wrote (it holds more than "
                                 f"weights and plain data, or is corrupt: {type(err).__name__}): delete it or pass "
                                 "another checkpoint path") from err
            self.module.load_state_dict(state["module"])
            self.opt.load_state_dict(state["opt"])
            if self.sched is not None and state.get("sched") is not None:
                self.sched.load_state_dict(state["sched"])
            self.gen.set_state(state["gen"])
            self.start, self.history = state["epoch"], state["history"]

    def run(self, epochs: int, n: int, batch: int, step, desc: str, progress: bool):
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=self.start, desc=desc, disable=not progress, leave=False)
        for epoch in range(self.start, epochs):
            total = 0.0
            for idx in _batches(n, batch, self.gen):
                self.opt.zero_grad()
                loss = step(idx, self.gen)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: the training loss is {float(loss.detach())} in epoch "
                                             f"{epoch + 1}: lower the learning rate (lr=...) or check the training "
                                             "set for NaN")
                loss.backward()
                if self.clip:
                    torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
                self.opt.step()
                if self.sched is not None:
                    self.sched.step()
                total += float(loss.detach()) * len(idx)
            self.history.append(total / n)
            bar.update(1)
            bar.set_postfix(loss=f"{self.history[-1]:.4g}")
            if self.checkpoint and ((epoch + 1) % self.every == 0 or epoch + 1 == epochs):
                tmp = self.checkpoint + ".tmp"
                torch.save({"module": self.module.state_dict(), "opt": self.opt.state_dict(),
                            "sched": None if self.sched is None else self.sched.state_dict(),
                            "gen": self.gen.get_state(), "epoch": epoch + 1, "history": self.history}, tmp)
                os.replace(tmp, self.checkpoint)
        bar.close()
        return self.history


def _check_input(x: torch.Tensor, n_in: int) -> None:
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ValueError(f"the network takes spectra of {n_in} pixels, got shape {tuple(x.shape)}: use the "
                         "mask and normalization of the training set (its metadata)")
    if not torch.isfinite(x).all():
        raise ValueError("the spectra hold NaN or infinite values: pass the valid pixels only")


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


class TwoStage:
    """Su & Li's two-stage model (module docstring). ``n_in`` pixels, ``scale`` the labels'
    :class:`LabelScale`; ``latent`` 30, ``hidden`` 400 and ``kl_weight`` 1e-6 as in the paper."""

    kind = "two_stage"

    def __init__(self, n_in: int, scale: LabelScale, latent: int = 30, hidden: int = 400, kl_weight: float = 1e-6,
                 metadata: dict | None = None):
        self.n_in, self.scale, self.latent, self.hidden, self.kl_weight = n_in, scale, latent, hidden, kl_weight
        n_out = len(scale.reference)
        self.vae = _VAE(n_in, hidden, latent)
        self.regressor = _mlp([latent, 100, 1000, 1000, 100, n_out])
        self.metadata = dict(metadata or {})
        self.history: dict = {}

    def _vae_loss(self, x, gen):
        """Su & Li's loss: the mean square error between input and output (over the pixels and the
        batch) plus ``kl_weight`` × the KL divergence of the latent Gaussians from N(0, 1) (summed
        over the latent dimensions, averaged over the batch). Against the pixels' sum of squares,
        the weight 1e-6 would be 4,144× weaker on the ARCS grid: the latent widths then collapse
        and the latent draws give no spread."""
        recon, mu, logvar = self.vae(x, gen)
        rec = ((recon - x) ** 2).mean()
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1).mean()
        return rec + self.kl_weight * kl

    def fit(self, values, constants, epochs: int = 200, regressor_epochs: int = 200, batch: int = 128,
            lr: float = 1e-3, seed: int = 0, checkpoint: str | None = None, checkpoint_every: int = 10,
            progress: bool = True) -> TwoStage:
        """Train the VAE on ``values`` (N, P), then the regressor from the latent means to the
        labels of ``constants`` (N, n) eV/Å². ``checkpoint``: a path prefix (two files)."""
        x, z = _as_tensor(values), self.scale.to_z(constants)
        self._check_input(x)
        tv = _Trainer(self.vae, lr, checkpoint and checkpoint + ".vae.pt", checkpoint_every, seed)
        resumed_to = tv.start
        self.history["vae"] = tv.run(epochs, len(x), batch, lambda i, g: self._vae_loss(x[i], g), "VAE", progress)
        if checkpoint and resumed_to < epochs and os.path.exists(checkpoint + ".regressor.pt"):
            os.remove(checkpoint + ".regressor.pt")  # made on the latents of an earlier VAE: stale
        with torch.no_grad():
            m = self.vae.encode(x)[0]
        tr = _Trainer(self.regressor, lr, checkpoint and checkpoint + ".regressor.pt", checkpoint_every, seed + 1)
        self.history["regressor"] = tr.run(regressor_epochs, len(x), batch,
                                           lambda i, g: ((self.regressor(m[i]) - z[i]) ** 2).mean(), "regressor",
                                           progress)
        return self

    def finetune(self, measured, epochs: int = 100, lr: float = 1e-4, seed: int = 0, progress: bool = True):
        """Fine-tune the VAE on measured spectra (M, P) at a reduced learning rate (the regressor
        stays): the encoder learns what the measurement has that the simulations lack."""
        x = _as_tensor(np.atleast_2d(measured))
        self._check_input(x)
        tv = _Trainer(self.vae, lr, None, 1, seed)
        self.history["finetune"] = tv.run(epochs, len(x), max(1, len(x)), lambda i, g: self._vae_loss(x[i], g),
                                          "fine-tune", progress)
        return self

    @torch.no_grad()
    def predict(self, values, n_draws: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Constants (eV/Å²) for each spectrum (N, P): the mean and standard deviation over
        ``n_draws`` latent vectors drawn from the encoder's Gaussians. Shapes (N, n) each."""
        x = _as_tensor(np.atleast_2d(values))
        self._check_input(x)
        mu, logvar = self.vae.encode(x)
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn((n_draws, *mu.shape), generator=gen)
        z = self.regressor(mu + torch.exp(0.5 * logvar) * eps)  # (draws, N, n)
        phi = self.scale.to_phi(z)
        return phi.mean(0), phi.std(0)

    def _check_input(self, x):
        _check_input(x, self.n_in)

    def state(self) -> dict:
        return {"vae": self.vae.state_dict(), "regressor": self.regressor.state_dict()}

    def config(self) -> dict:
        return {"kind": self.kind, "n_in": self.n_in, "scale": asdict(self.scale), "latent": self.latent,
                "hidden": self.hidden, "kl_weight": self.kl_weight}

    def save(self, path: str) -> None:
        """``path``.pt (state dict) and ``path``.json (configuration, metadata, training history)."""
        _save(self, path)


class _Standardize(nn.Module):
    """x → ((x − mean) / spread) W: the training set's per-pixel standardization, then (optional)
    the projection on its leading principal components, whitened. Buffers, so saved with the net."""

    def __init__(self, n_in: int, n_out: int | None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("spread", torch.ones(n_in))
        self.register_buffer("W", None if n_out is None else torch.zeros(n_in, n_out))  # None: no projection

    def fitted(self, x: torch.Tensor) -> _Standardize:
        self.mean = x.mean(0)
        self.spread = x.std(0).clamp(min=1e-6 * float(x.std(0).max().clamp(min=1e-30)))
        if self.W is not None:
            xs = (x - self.mean) / self.spread
            _, S, Vt = torch.linalg.svd(xs.double(), full_matrices=False)
            k = self.W.shape[1]
            self.W = (Vt[:k].T / (S[:k] / np.sqrt(len(x))).clamp(min=1e-12)).to(x.dtype)
        return self

    def forward(self, x):
        x = (x - self.mean) / self.spread
        return x if self.W is None else x @ self.W


class GaussianPosterior:
    """q(u | x) = N(μ(x), L Lᵀ), L lower triangular with a positive diagonal, from an MLP on the
    standardized input (P → ``hidden`` → n + n(n+1)/2, SiLU; ``n_components``: first project on
    that many whitened principal components), trained by the negative log-likelihood of the
    simulated labels; ``predict`` gives the mean and the covariance in eV/Å². ``hidden``: the
    widths of the hidden layers (an int: two of that width); ``activation``: ``"silu"`` or ``"tanh"``."""

    kind = "gaussian_posterior"

    def __init__(self, n_in: int, scale: LabelScale, hidden=(512, 512, 512), n_components: int | None = None,
                 activation: str = "silu", metadata: dict | None = None):
        if isinstance(hidden, int):
            hidden = (hidden, hidden)
        if n_components is not None and not 1 <= int(n_components) <= n_in:
            raise ValueError(f"n_components must be between 1 and the {n_in} inputs, got {n_components}")
        if activation not in ("silu", "tanh"):
            raise ValueError(f"activation must be 'silu' or 'tanh', got {activation!r}")
        self.n_in, self.scale, self.hidden = n_in, scale, [int(h) for h in hidden]
        self.n_components, self.activation = n_components, activation
        n = len(scale.reference)
        self.n = n
        width = n_in if n_components is None else int(n_components)
        self.standardize = _Standardize(n_in, n_components and int(n_components))
        self.net = _mlp([width, *self.hidden, n + n * (n + 1) // 2], act=nn.SiLU if activation == "silu" else nn.Tanh,
                        first=[self.standardize])
        self.metadata = dict(metadata or {})
        self.history: dict = {}
        self._tril = torch.tril_indices(n, n)

    def _dist(self, x):
        out = self.net(x)
        mu, raw = out[:, : self.n], out[:, self.n :]
        L = torch.zeros((len(x), self.n, self.n), dtype=out.dtype)
        L[:, self._tril[0], self._tril[1]] = raw
        diag = torch.nn.functional.softplus(torch.diagonal(L, dim1=1, dim2=2)) + 1e-4
        L = torch.tril(L, -1) + torch.diag_embed(diag)
        return mu, L

    def nll(self, x, z):
        mu, L = self._dist(x)
        w = torch.linalg.solve_triangular(L, (z - mu).unsqueeze(-1), upper=False).squeeze(-1)
        return (0.5 * (w**2).sum(1) + torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)).mean()

    def fit(self, values, constants, epochs: int = 100, batch: int = 128, lr: float = 1e-3, seed: int = 0,
            checkpoint: str | None = None, checkpoint_every: int = 10, clip: float = 5.0, noise=None,
            restandardize: bool = False, progress: bool = True):
        """Train on ``values`` (N, P) and ``constants`` (N, n) eV/Å²: the standardization from
        ``values``, then Adam with a one-cycle schedule peaking at ``lr``, gradients clipped to
        ``clip``. ``noise``: the measurement's σ per pixel (a number or (P,)), drawn afresh onto
        every batch, so that the posterior is that of noisy data (for measured spectra; None:
        the simulations as they are). ``restandardize``: the noisy columns (σ > 0) of each row
        are then made :func:`standardized` again, as a measured spectrum is after its noise (for
        inputs made by :func:`standardized`). ``checkpoint``: a path prefix; a rerun resumes."""
        x, z = _as_tensor(values), self.scale.to_z(constants)
        _check_input(x, self.n_in)
        sigma = None if noise is None else torch.as_tensor(np.broadcast_to(np.asarray(noise, dtype=np.float32),
                                                                           (self.n_in,)).copy())
        if restandardize and sigma is None:
            raise ValueError("restandardize=True makes the noisy pixels standardized again: give noise=σ as well")
        cols = None if not restandardize else sigma > 0

        def noisy(xi, g):
            if sigma is None:
                return xi
            xi = xi + sigma * torch.randn(xi.shape, generator=g)
            return xi if cols is None else _restandardize(xi, cols)

        with torch.no_grad():
            self.standardize.fitted(noisy(x, torch.Generator().manual_seed(seed)))

        def step(i, g):
            return self.nll(noisy(x[i], g), z[i])

        t = _Trainer(self.net, lr, checkpoint and checkpoint + ".posterior.pt", checkpoint_every, seed,
                     one_cycle=(epochs, -(-len(x) // batch)), clip=clip)
        self.history["posterior"] = t.run(epochs, len(x), batch, step, "posterior", progress)
        self.metadata["noise"] = None if noise is None else np.asarray(noise, dtype=float).tolist()
        self.metadata["restandardize"] = bool(restandardize)
        return self

    @torch.no_grad()
    def predict(self, values) -> tuple[np.ndarray, np.ndarray]:
        """Mean (N, n) and covariance (N, n, n) of the constants, eV/Å² and (eV/Å²)²."""
        x = _as_tensor(np.atleast_2d(values))
        _check_input(x, self.n_in)
        mu, L = self._dist(x)
        s = self.scale.phi_scale()
        cov = (L @ L.transpose(1, 2)).numpy() * s[None, :, None] * s[None, None, :]
        return self.scale.to_phi(mu), cov

    def state(self) -> dict:
        return {"net": self.net.state_dict()}

    def config(self) -> dict:
        return {"kind": self.kind, "n_in": self.n_in, "scale": asdict(self.scale), "hidden": self.hidden,
                "n_components": self.n_components, "activation": self.activation}

    def save(self, path: str) -> None:
        _save(self, path)


class PosteriorEnsemble:
    """Several :class:`GaussianPosterior` trained alike but from different seeds (initial weights
    and minibatches), and their equal-weight mixture: ``predict`` gives its mean (the members'
    mean) and covariance (the members' mean covariance plus the covariance of their means).

    Each member is calibrated on inputs like its simulations. An input off them (a measured
    spectrum the model does not reproduce) is an extrapolation where the members disagree by more
    than their own widths: on the ARCS Al spectra, the means of four members of the posterior of
    noisy spectra scatter by up to 2.3 of a member's own standard deviation (docs/amortized.md). The second term of
    the covariance shows that disagreement, and the mean averages out each member's own error.
    ``member_means(values)`` (M, N, n) gives the members' means themselves."""

    kind = "posterior_ensemble"

    def __init__(self, members):
        members = list(members)
        if not members or not all(isinstance(m, GaussianPosterior) for m in members):
            raise ValueError("a PosteriorEnsemble takes one or more GaussianPosterior members")
        first = members[0]
        for m in members[1:]:
            if m.n_in != first.n_in or m.scale != first.scale:
                raise ValueError("the ensemble's members must take the same inputs and label scale "
                                 f"({first.n_in} inputs, {first.scale}), got {m.n_in} and {m.scale}")
        self.members = members
        self.n_in, self.scale, self.n = first.n_in, first.scale, first.n
        self.metadata = dict(first.metadata)
        self.history = {f"member{j}": m.history for j, m in enumerate(members)}

    @classmethod
    def fit(cls, n_in: int, scale: LabelScale, values, constants, members: int = 4, seed: int = 0,
            checkpoint: str | None = None, network: dict | None = None, metadata: dict | None = None,
            progress: bool = True, **fit_options) -> PosteriorEnsemble:
        """Train ``members`` posteriors (``GaussianPosterior(n_in, scale, **network)``), member j
        with seed ``seed + j`` for its initial weights and its minibatches (:meth:`GaussianPosterior.fit`
        with ``fit_options``); ``checkpoint``: member 0's prefix, member j's that with
        ``.member{j}`` appended (a rerun resumes each)."""
        if int(members) < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        out = []
        for j in range(int(members)):
            with torch.random.fork_rng():
                torch.manual_seed(seed + j)
                net = GaussianPosterior(n_in, scale, metadata=metadata, **(network or {}))
            ck = None if checkpoint is None else (checkpoint if j == 0 else f"{checkpoint}.member{j}")
            out.append(net.fit(values, constants, seed=seed + j, checkpoint=ck, progress=progress, **fit_options))
        return cls(out)

    @torch.no_grad()
    def member_means(self, values) -> np.ndarray:
        """Each member's mean (M, N, n) of the constants, eV/Å²."""
        return np.stack([m.predict(values)[0] for m in self.members])

    @torch.no_grad()
    def predict(self, values) -> tuple[np.ndarray, np.ndarray]:
        """Mean (N, n) and covariance (N, n, n) of the mixture, eV/Å² and (eV/Å²)²."""
        parts = [m.predict(values) for m in self.members]
        means = np.stack([p[0] for p in parts])
        mean = means.mean(0)
        dev = means - mean[None]
        spread = np.einsum("mni,mnj->nij", dev, dev) / len(parts)
        return mean, np.mean([p[1] for p in parts], axis=0) + spread

    def state(self) -> dict:
        return {"members": [m.state() for m in self.members]}

    def config(self) -> dict:
        return {"kind": self.kind, "members": [m.config() for m in self.members]}

    def save(self, path: str) -> None:
        _save(self, path)


def _save(obj, path: str) -> None:
    from xtds.amortized.training_set import package_versions

    torch.save(obj.state(), path + ".pt.tmp")
    os.replace(path + ".pt.tmp", path + ".pt")
    meta = {"config": obj.config(), "metadata": obj.metadata, "history": obj.history, "versions": package_versions()}
    with open(path + ".json.tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, default=str)
    os.replace(path + ".json.tmp", path + ".json")


def load(path: str):
    """A saved :class:`TwoStage`, :class:`GaussianPosterior` or :class:`PosteriorEnsemble`
    (``path``.pt and ``path``.json)."""
    for ext in (".pt", ".json"):
        if not os.path.exists(path + ext):
            raise FileNotFoundError(f"no saved network at {path}: {path + ext} is missing")
    with open(path + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    state = torch.load(path + ".pt", weights_only=True)
    if meta["config"]["kind"] == PosteriorEnsemble.kind:
        history = meta.get("history", {})
        members = [_build(cfg, st, meta.get("metadata"), history.get(f"member{j}", {}))
                   for j, (cfg, st) in enumerate(zip(meta["config"]["members"], state["members"], strict=True))]
        return PosteriorEnsemble(members)
    return _build(meta["config"], state, meta.get("metadata"), meta.get("history", {}))


def _build(config: dict, state: dict, metadata, history):
    """A network from its saved config and state dict."""
    cfg = dict(config)
    kind = cfg.pop("kind")
    scale = LabelScale(**{k: (tuple(v) if k == "reference" else v) for k, v in cfg.pop("scale").items()})
    cls = {"two_stage": TwoStage, "gaussian_posterior": GaussianPosterior}[kind]
    obj = cls(scale=scale, metadata=metadata, **cfg)
    if kind == "two_stage":
        obj.vae.load_state_dict(state["vae"])
        obj.regressor.load_state_dict(state["regressor"])
    else:
        obj.net.load_state_dict(state["net"])
    obj.history = history
    return obj
