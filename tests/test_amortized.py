"""Training sets for amortized inference (xtds.amortized.make_training_set)."""

import numpy as np
import pytest
import torch
import xarray as xr

import xtds
from xtds.amortized import draw_constants, make_training_set
from xtds.lattice.stability import min_eigenvalues
from xtds.observables import PowderSpectrum

AL = xtds.Crystal.preset("Al")
REF = {"b0": -0.61, "b1": 0.10, "b2": -0.71, "c0": -0.155, "c1": 0.032}


@pytest.fixture(scope="module")
def small():
    """A cheap powder spectrum: 6 |Q| bins × 8 energies, a mask, the source's normalization."""
    model = xtds.IFCModel(AL, shells=2)
    Q, E = np.linspace(2.0, 4.5, 6), np.linspace(5.0, 33.0, 8)
    mask = np.ones((8, 6), dtype=bool)
    mask[-2:, :2] = False  # a kinematic corner
    return PowderSpectrum(model, Q, E, 150.0, mask=mask, mesh=6, multiphonon=(2,), multiphonon_mesh=8, dw_mesh=8)


def test_draws_are_stable_seeded_and_in_the_box(small):
    model = small.model
    ref = model.vector(REF).numpy()
    k = small.stability_k()
    phis = draw_constants(model, REF, 40, box=(0.5, 1.5), seed=4, k=k)
    assert phis.shape == (40, 5)
    u = phis / ref
    assert np.all((u >= 0.5) & (u <= 1.5))
    np.testing.assert_array_equal(phis, draw_constants(model, REF, 40, box=(0.5, 1.5), seed=4, k=k))
    for p in phis:
        lam = min_eigenvalues(model, torch.as_tensor(p), k)
        assert bool((lam[torch.isfinite(lam)] >= -1e-10).all())
    # without the check, the same box holds unstable draws (so the check removes some)
    raw = draw_constants(model, REF, 200, box=(0.5, 1.5), seed=4)
    unstable = [p for p in raw if float(min_eigenvalues(model, torch.as_tensor(p), k).min()) < -1e-10]
    assert len(unstable) > 0
    with pytest.raises(ValueError, match="stable"):
        draw_constants(model, REF, 10, box=(-3.0, -2.0), seed=0, k=k)  # every spring reversed


@pytest.mark.parametrize("preset", ["Al", "Si"])  # real H(k) (Bravais, centrosymmetric) and complex (diamond)
def test_batched_stability_check_equals_the_draw_by_draw_one(preset):
    from xtds.amortized.training_set import _stable

    model = xtds.IFCModel(xtds.Crystal.preset(preset), shells=2)
    rng = np.random.default_rng(1)
    k = rng.normal(size=(40, 3)) * 1.5
    k[0] = 0.0  # Γ: the translations are left out
    ref = rng.normal(size=model.n_free) * 0.3
    phis = ref * rng.uniform(-1.0, 2.0, size=(90, model.n_free))
    direct = np.array([bool((lam[torch.isfinite(lam)] >= -1e-10).all())
                       for lam in (min_eigenvalues(model, torch.as_tensor(p), k) for p in phis)])
    assert 0 < direct.sum() < len(direct)  # both kinds present, so the comparison can fail
    np.testing.assert_array_equal(_stable(model, phis, k, chunk=32), direct)


def test_simulated_values_are_the_observable_at_each_draw(small, tmp_path):
    out = make_training_set(small, REF, 12, seed=1, workers=0, batch=5, progress=False)
    assert out["values"].shape == (12, len(small)) and out["values"].dtype == np.float32
    for i in (0, 7, 11):
        small.reset()
        with torch.no_grad():
            direct = small.mean(torch.as_tensor(out["constants"].values[i])).numpy()
        np.testing.assert_allclose(out["values"].values[i], direct, rtol=1e-5, atol=1e-6)
        assert abs(float(direct.mean())) < 1e-12  # the source's normalization: mean 0 …
        assert float(direct.max() - direct.min()) == pytest.approx(1.0)  # … and range 1
    # two worker processes give the same set
    par = make_training_set(small, REF, 12, seed=1, workers=2, batch=5, progress=False)
    np.testing.assert_array_equal(par["values"].values, out["values"].values)


def test_store_resumes_and_refuses_other_settings(small, tmp_path, monkeypatch):
    import zarr

    from xtds.amortized import training_set as sim_mod

    store = str(tmp_path / "train.zarr")
    first = make_training_set(small, REF, 10, seed=2, workers=0, batch=4, store=store, progress=False)
    root = zarr.open_group(store, mode="r+")
    assert bool(np.all(root["done"][:]))
    with xr.open_zarr(store, consolidated=False) as opened:  # the store is an xarray Dataset too
        np.testing.assert_array_equal(opened["values"].values, first["values"].values)
        assert opened["constants"].dims == ("draw", "constant")
    root["done"][1] = False  # as if killed while batch 1 was running
    calls = []
    real = sim_mod._evaluate
    monkeypatch.setattr(sim_mod, "_evaluate", lambda phis, *args: calls.append(len(phis)) or real(phis, *args))
    again = make_training_set(small, REF, 10, seed=2, workers=0, batch=4, store=store, progress=False)
    assert calls == [4]  # only the unfinished batch
    np.testing.assert_allclose(again["values"].values, first["values"].values, rtol=1e-6)
    with pytest.raises(ValueError, match="other settings"):
        make_training_set(small, REF, 10, seed=3, workers=0, batch=4, store=store, progress=False)


def _toy(n, seed, sigma=0.05, P=20):
    """x = A u + σ ε, u uniform in the box (as fractions of the reference)."""
    rng = np.random.default_rng(seed)
    A = np.random.default_rng(99).standard_normal((P, 3))
    ref = np.array([-0.6, 0.1, -0.7])
    u = rng.uniform(0.5, 1.5, (n, 3))
    x = (u - 1.0) @ A.T + sigma * rng.standard_normal((n, P))
    return x, u * ref, ref, A


@pytest.mark.parametrize(("n_components", "noise_in_training"),
                         [(None, False), (8, False), (None, True)])  # standardized; 8 whitened components; noise=σ
@pytest.mark.heavy
def test_gaussian_posterior_is_calibrated_on_a_linear_toy(n_components, noise_in_training):
    """Linear-Gaussian data: the exact posterior (away from the box edges) has the covariance
    σ² (AᵀA)⁻¹ in u; the learned one must match it and its 68 % intervals must hold ~68 %. With
    ``noise=σ``, trained on noise-free simulations, it must be the posterior of the noisy data."""
    from xtds.amortized.networks import GaussianPosterior, LabelScale

    sigma = 0.3  # a posterior width of 5–7 % of the box: learned in 60 epochs (3 s)
    x, phi, ref, A = _toy(4000, 0, 0.0 if noise_in_training else sigma)
    post = GaussianPosterior(20, LabelScale(tuple(ref)), hidden=64, n_components=n_components).fit(
        x, phi, epochs=60, batch=200, lr=3e-3, noise=sigma if noise_in_training else None, progress=False)
    xt, phit, _, _ = _toy(1000, 1, sigma)
    mean, cov = post.predict(xt)
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
    inside = np.abs(mean - phit) <= sd
    exact_sd = sigma * np.sqrt(np.diag(np.linalg.inv(A.T @ A))) * np.abs(ref)  # in φ: u × ref
    interior = np.all(np.abs(phit / ref - 1) < 0.35, axis=1)  # away from the box edges
    np.testing.assert_allclose(np.median(sd[interior], axis=0), exact_sd, rtol=0.3)
    for j in range(3):
        assert 0.60 <= inside[interior, j].mean() <= 0.76


@pytest.mark.heavy
def test_two_stage_learns_saves_and_resumes(tmp_path):
    from xtds.amortized.networks import LabelScale, TwoStage, load

    x, phi, ref, _ = _toy(600, 2, sigma=0.01)
    scale = LabelScale(tuple(ref))
    net = TwoStage(20, scale, latent=6, hidden=64).fit(x, phi, epochs=40, regressor_epochs=60, batch=100, lr=3e-3,
                                                       progress=False)
    xt, phit, _, _ = _toy(200, 3, sigma=0.01)
    mean, spread = net.predict(xt, n_draws=200)
    rel = np.median(np.abs(mean / phit - 1), axis=0)
    assert np.all(rel < 0.05), rel  # a toy: a few per cent after a few seconds of training
    assert np.all(spread > 0)
    net.save(str(tmp_path / "net"))
    back = load(str(tmp_path / "net"))
    np.testing.assert_allclose(back.predict(xt, n_draws=50)[0], net.predict(xt, n_draws=50)[0], rtol=1e-6)
    # a checkpointed run stopped after 3 epochs and resumed equals 6 epochs at once
    ck = str(tmp_path / "ck")

    def fresh():
        torch.manual_seed(5)  # the same initial weights
        return TwoStage(20, scale, latent=6, hidden=32)

    whole = fresh().fit(x, phi, epochs=6, regressor_epochs=6, progress=False)
    fresh().fit(x, phi, epochs=3, regressor_epochs=3, checkpoint=ck, progress=False)
    resumed = fresh().fit(x, phi, epochs=6, regressor_epochs=6, checkpoint=ck, progress=False)
    assert len(resumed.history["vae"]) == 6
    np.testing.assert_allclose(resumed.predict(xt, n_draws=20)[0], whole.predict(xt, n_draws=20)[0], rtol=1e-5)
    with pytest.raises(ValueError, match="pixels"):
        net.predict(np.zeros((2, 19)))


def test_two_stage_loss_is_the_papers_mean_square_error_plus_the_weighted_kl():
    """Su & Li: the mean square error between input and output plus 1e-6 × KL(q ‖ N(0, 1)). Summed
    over the pixels instead, the KL would weigh P times less (4,144 on the ARCS grid), and on the
    Al run the latent widths collapsed to ≤ 3e-4 and the draws' spread to ≤ 5e-5 eV/Å²."""
    from xtds.amortized.networks import LabelScale, TwoStage

    net = TwoStage(20, LabelScale((-0.6, 0.1, -0.7)), latent=4, hidden=8, kl_weight=0.01)
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((5, 20)), dtype=torch.float32)
    loss = net._vae_loss(x, torch.Generator().manual_seed(3))
    recon, mu, logvar = net.vae(x, torch.Generator().manual_seed(3))  # the same draws
    mse = float(((recon - x) ** 2).sum()) / (5 * 20)
    m, lv = mu.detach().numpy().ravel(), logvar.detach().numpy().ravel()
    kl = sum(0.5 * (a**2 + np.exp(b) - 1 - b) for a, b in zip(m, lv, strict=True)) / 5  # per spectrum
    assert float(loss) == pytest.approx(mse + 0.01 * kl, rel=1e-5)


def test_gaussian_posterior_resumes_saves_and_refuses_bad_input(tmp_path, monkeypatch):
    """A training run killed after 3 of 6 epochs and rerun from its checkpoint equals the whole
    run (weights, optimizer, one-cycle schedule and draws restored); save/load keeps the input
    standardization; a diverging loss stops with advice instead of training on NaN."""
    from xtds.amortized import networks
    from xtds.amortized.networks import GaussianPosterior, LabelScale, load

    x, phi, ref, _ = _toy(300, 4, sigma=0.1)
    x = x * 50 + 7  # the standardization must take this out
    scale = LabelScale(tuple(ref))
    ck = str(tmp_path / "post")

    def fresh():
        torch.manual_seed(3)
        return GaussianPosterior(20, scale, hidden=(32, 32), n_components=10)

    whole = fresh().fit(x, phi, epochs=6, batch=50, progress=False)
    real, calls = networks._batches, []

    def dying(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(networks, "_batches", dying)
    with pytest.raises(KeyboardInterrupt):
        fresh().fit(x, phi, epochs=6, batch=50, checkpoint=ck, checkpoint_every=1, progress=False)
    monkeypatch.setattr(networks, "_batches", real)
    resumed = fresh().fit(x, phi, epochs=6, batch=50, checkpoint=ck, checkpoint_every=1, progress=False)
    assert len(resumed.history["posterior"]) == 6
    np.testing.assert_allclose(resumed.predict(x[:20])[0], whole.predict(x[:20])[0], rtol=1e-5)
    whole.save(str(tmp_path / "saved"))
    back = load(str(tmp_path / "saved"))
    np.testing.assert_allclose(back.predict(x[:20])[1], whole.predict(x[:20])[1], rtol=1e-6)
    with pytest.raises(FloatingPointError, match="learning rate"):
        fresh().fit(x, phi, epochs=2, batch=50, lr=1e12, progress=False)


@pytest.mark.heavy
def test_posterior_ensemble_is_the_mixture_and_widens_off_the_simulations(tmp_path):
    """PosteriorEnsemble: its mean and covariance are the equal-weight mixture's (computed here
    member by member); members differ by seed and a refit with the same seed repeats them; save/load
    and the checkpoints keep them; on inputs four times as far out as the simulations the members
    disagree far more than on inputs like them (measured 13×, median over constants; asserted 4×)."""
    from xtds.amortized.networks import GaussianPosterior, LabelScale, PosteriorEnsemble, load

    x, phi, ref, _ = _toy(2000, 0, 0.3)
    scale = LabelScale(tuple(ref))
    kw = dict(members=3, network={"hidden": 64}, epochs=30, batch=200, lr=3e-3, progress=False)
    ens = PosteriorEnsemble.fit(20, scale, x, phi, seed=5, checkpoint=str(tmp_path / "ck"), **kw)
    xt = _toy(300, 1, 0.3)[0]
    mean, cov = ens.predict(xt)
    parts = [m.predict(xt) for m in ens.members]
    means = np.stack([p[0] for p in parts])
    assert np.abs(means[0] - means[1]).max() > 1e-4  # different seeds, different members
    want_cov = sum(p[1] + np.einsum("ni,nj->nij", p[0] - means.mean(0), p[0] - means.mean(0)) for p in parts) / 3
    np.testing.assert_allclose(mean, means.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-10, atol=1e-14)
    again = PosteriorEnsemble.fit(20, scale, x, phi, seed=5, **kw)
    np.testing.assert_allclose(again.predict(xt)[0], mean, rtol=1e-6)
    resumed = PosteriorEnsemble.fit(20, scale, x, phi, seed=5, checkpoint=str(tmp_path / "ck"), **kw)
    assert (tmp_path / "ck.member2.posterior.pt").exists()
    np.testing.assert_allclose(resumed.predict(xt)[0], mean, rtol=1e-6)
    ens.save(str(tmp_path / "ens"))
    back = load(str(tmp_path / "ens"))
    assert isinstance(back, PosteriorEnsemble) and len(back.members) == 3
    np.testing.assert_allclose(back.predict(xt)[1], cov, rtol=1e-6, atol=1e-12)

    def disagreement(v):
        return np.median(ens.member_means(v).std(0) / np.abs(ref))

    assert disagreement(4 * xt) > 4 * disagreement(xt)
    with pytest.raises(ValueError, match="same inputs"):
        PosteriorEnsemble([ens.members[0], GaussianPosterior(21, scale, hidden=8)])


def test_cli_simulate_train_predict(tmp_path, capsys):
    """`xtds amortize simulate|train|predict` end to end on a tiny set (mesh 6, 24 spectra)."""
    import json

    from xtds.cli import main

    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(REF))
    store, net = str(tmp_path / "t.zarr"), str(tmp_path / "net")
    assert main(["amortize", "simulate", "--crystal", "Al", "--shells", "2", "--reference", str(ref), "--n", "24",
                 "--mesh", "6", "--store", store, "--workers", "0", "--quiet"]) == 0
    assert main(["amortize", "train", "--store", store, "--out", net, "--epochs", "2", "--quiet", "--posterior",
                 "--noise", "0.25"]) == 0
    meta = json.loads((tmp_path / "net.json").read_text())["metadata"]
    assert meta["input"] == "standardized" and meta["restandardize"] and meta["noise"][0] == 0.25
    capsys.readouterr()
    assert main(["amortize", "train", "--store", store, "--out", net, "--epochs", "2", "--posterior"]) == 2
    assert "net.pt exists: pass --overwrite" in capsys.readouterr().err  # a trained network is never replaced
    saved = (tmp_path / "net.json").read_text()
    assert main(["amortize", "train", "--store", store, "--out", net, "--epochs", "2", "--noise", "0.25",
                 "--overwrite"]) == 2
    assert "--posterior" in capsys.readouterr().err
    assert main(["amortize", "train", "--store", store, "--out", net, "--epochs", "2", "--members", "3",
                 "--overwrite"]) == 2
    assert "--posterior" in capsys.readouterr().err
    ens = str(tmp_path / "ens")
    assert main(["amortize", "train", "--store", store, "--out", ens, "--epochs", "2", "--quiet", "--posterior",
                 "--members", "2"]) == 0
    assert main(["amortize", "predict", "--net", ens, "--temperature", "150"]) == 0
    assert "150 K: " in capsys.readouterr().out
    out = tmp_path / "p.json"
    assert main(["amortize", "predict", "--net", net, "--temperature", "150,280", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["temperature"] for r in rows] == [150.0, 280.0] and set(rows[0]["constants"]) == set(REF)
    assert main(["amortize", "predict", "--net", net, "--temperature", "150", "--out", str(out)]) == 2
    assert "p.json exists: pass --overwrite" in capsys.readouterr().err
    for own in (net + ".json", net + ".pt"):  # the network it reads: never, with --overwrite or not
        assert main(["amortize", "predict", "--net", net, "--out", own, "--overwrite"]) == 2
        assert "the network or the data this command reads" in capsys.readouterr().err
    assert (tmp_path / "net.json").read_text() == saved
    assert main(["amortize", "predict", "--net", str(tmp_path / "missing")]) == 2
    assert "no saved network" in capsys.readouterr().err


def test_standardized_spectra_forget_scale_and_offset():
    """standardized(a x + b) = standardized(x) for a > 0 (the source's max − min normalization, set
    by one noisy pixel, drops out); each row has mean 0 and standard deviation 1; the batch version
    used in training (after the noise) equals it; a flat spectrum and restandardize without noise
    are refused."""
    from xtds.amortized import GaussianPosterior, LabelScale, standardized
    from xtds.amortized.networks import _restandardize

    x = np.random.default_rng(4).normal(size=(5, 30))
    s = standardized(x)
    np.testing.assert_allclose(standardized(3.7 * x - 0.2), s, atol=1e-6)
    np.testing.assert_allclose(s.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(s.std(1), 1, atol=1e-6)
    cols = torch.ones(31, dtype=torch.bool)
    cols[-1] = False  # a temperature column is left as it is
    xt = torch.as_tensor(np.concatenate([2 * x + 1, np.full((5, 1), 0.25)], 1), dtype=torch.float32)
    got = _restandardize(xt, cols).numpy()
    np.testing.assert_allclose(got[:, :-1], s, atol=1e-5)
    assert np.all(got[:, -1] == 0.25)
    with pytest.raises(ValueError, match="no spread"):
        standardized(np.ones((2, 4)))
    post = GaussianPosterior(31, LabelScale((-0.6, 0.1, -0.7)), hidden=8)
    with pytest.raises(ValueError, match="noise"):
        post.fit(np.zeros((4, 31)), np.tile([-0.6, 0.1, -0.7], (4, 1)), epochs=1, restandardize=True, progress=False)


@pytest.mark.heavy
def test_single_crystal_points_with_temperature_draws():
    """A single-crystal observable (the frozen TDSIntensity, one phonon, at 20 q-points) with a
    temperature per draw: each simulated row equals the observable made at that draw's temperature
    and evaluated at its constants; the observable passed in is left as it was. An observable
    without a temperature is refused with a message."""
    from xtds.observables.tds.intensity import TDSIntensity

    model = xtds.IFCModel(AL, shells=2)
    q = AL.rlu_to_cartesian(np.random.default_rng(0).uniform(0.1, 2.4, size=(20, 3)))
    obs = TDSIntensity(model, q, 300.0, method="one_phonon")
    out = make_training_set(obs, REF, 6, seed=2, workers=0, temperatures=(100.0, 600.0), progress=False)
    T = out["temperature"].values
    assert np.all((T >= 100) & (T <= 600)) and len(set(np.round(T, 6))) == 6
    for i in (0, 5):
        direct = TDSIntensity(model, q, float(T[i]), method="one_phonon")
        with torch.no_grad():
            expect = direct.mean(torch.as_tensor(out["constants"].values[i])).numpy()
        np.testing.assert_allclose(out["values"].values[i], expect, rtol=1e-6)
    assert obs.temperature == 300.0

    class NoTemperature(xtds.Observable):
        model = obs.model

        def __call__(self, phi, epoch=0):
            return obs(phi)

        def stability_k(self):
            return obs.stability_k()

        def __len__(self):
            return 20

    with pytest.raises(TypeError, match="no temperature"):
        make_training_set(NoTemperature(), REF, 4, workers=0, temperatures=(100.0, 600.0), progress=False)


@pytest.mark.heavy
def test_refine_reports_the_start_distance_in_standard_errors(small, monkeypatch):
    """``amortized_distance`` is the start's Mahalanobis distance from the refined constants. For a
    start this close the loss is quadratic in the constants, so the distance² must equal the rise
    of χ² from the refined optimum to the start (scale and background profiled out at both), an
    independent number the model computes. They differ by the second-order term Σ r∇²r that
    the Gauss–Newton covariance leaves out: 2 % here (χ²/ν = 0.66), allowed 10 %."""
    from xtds.amortized import distance_in_errors, refine
    from xtds.fitting import LM, Background
    from xtds.fitting.problem import Problem

    model = small.model
    obs = PowderSpectrum(model, small.q_centers, small.energies, 150.0, mask=small.mask, mesh=6, multiphonon=(2,),
                         multiphonon_mesh=8, dw_mesh=8, reference=REF)
    truth = model.vector(REF).numpy()
    with torch.no_grad():
        y = 3.0 * obs.mean(torch.as_tensor(truth)).numpy() + 0.2  # a scale and a background
    sigma = 0.01 * np.abs(y).max()
    y = y + np.random.default_rng(0).normal(size=y.shape) * sigma
    problem = Problem(obs, y, sigma=np.full(y.shape, sigma), loss="chi2", background=Background())
    for f in (1.001, 0.999):
        res = refine([problem], model, truth * f, optimizer=LM(progress=False))
        rise = res.attrs["amortized_loss"] - float(res["loss"].values[-1])
        d = res.attrs["amortized_distance"]
        assert 1.5 < d < 5  # the noise puts the optimum a few standard errors from the truth
        assert d**2 == pytest.approx(rise, rel=0.1)
        start = dict(zip(model.names, truth * f, strict=True))
        assert distance_in_errors(res, start) == pytest.approx(d)
        opt = {n: float(res["ifc"].sel(constant=n)) for n in model.names}
        assert distance_in_errors(res, opt) < 1e-9
    with pytest.raises(ValueError, match="no constants"):
        distance_in_errors(res, {"x9": 0.1})
    with pytest.raises(ValueError, match="derived"):
        distance_in_errors(res, opt | {"a0": float(res["ifc"].sel(constant="a0"))})
    # a start with its derived a0 is measured on the free constants; a distance that cannot be
    # had is NaN with the reason, and the finished fit is kept
    a0 = float(model.derived(torch.as_tensor([start[n] for n in model.names], dtype=torch.float64))[0])
    with_a0 = refine([problem], model, start | {"a0": a0}, optimizer=LM(progress=False))
    assert with_a0.attrs["amortized_distance"] == pytest.approx(d)
    import sys

    refine_module = sys.modules["xtds.amortized.refine"]  # the package's `refine` is the function

    def singular(*_):
        raise ValueError("singular, for the test")

    monkeypatch.setattr(refine_module, "distance_in_errors", singular)
    kept = refine([problem], model, start, optimizer=LM(progress=False))
    assert np.isnan(kept.attrs["amortized_distance"]) and "singular" in kept.attrs["amortized_distance_note"]
    assert float(kept["loss"].values[-1]) == pytest.approx(float(res["loss"].values[-1]), rel=1e-9)


def test_a_planted_training_checkpoint_runs_no_code(tmp_path):
    """A checkpoint path holding a pickle that would run code on loading (any file an attacker can
    plant there) is refused before training: only weights and plain data are read back."""
    import pickle

    from xtds.amortized.networks import GaussianPosterior, LabelScale

    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    ck = str(tmp_path / "post")
    with open(ck + ".posterior.pt", "wb") as f:
        pickle.dump({"module": Payload()}, f)
    x, phi, ref, _ = _toy(60, 2, sigma=0.1)
    post = GaussianPosterior(20, LabelScale(tuple(ref)), hidden=(8,), n_components=4)
    with pytest.raises(ValueError, match="not one xtds wrote"):
        post.fit(x, phi, epochs=1, batch=30, checkpoint=ck, progress=False)
    assert not ran.exists()
