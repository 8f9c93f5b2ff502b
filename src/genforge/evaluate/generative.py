"""Generator evaluation: pure metric functions of feature sets, images and models.

Feature-space metrics (FD, KID, precision/recall) take (N, D) features from whatever evaluator network
the caller uses; pixel-space checks (memorization) take images; likelihood estimates take a VAE that
follows the small encode / decode / log_likelihood protocol documented on `iwae_log_likelihood`.
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def _check_features(name: str, feats: torch.Tensor, min_rows: int = 2) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name} must be an (N, D) feature matrix, got shape {tuple(feats.shape)}; "
                         f"flatten images first (x.flatten(1)) or pass evaluator features")
    if len(feats) < min_rows:
        raise ValueError(f"{name} has {len(feats)} rows; at least {min_rows} are needed")


def _check_pair(feats_a: torch.Tensor, feats_b: torch.Tensor, names: tuple[str, str], min_rows: int = 2) -> None:
    _check_features(names[0], feats_a, min_rows)
    _check_features(names[1], feats_b, min_rows)
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} have different feature sizes "
                         f"({feats_a.shape[1]} vs {feats_b.shape[1]}); compute both with the same evaluator")


def _sqrt_psd(s: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric PSD matrix via eigh, tiny negative eigenvalues clamped to 0."""
    w, v = torch.linalg.eigh(s)  # (D,), (D, D)
    return (v * w.clamp_min(0).sqrt()) @ v.T  # (D, D)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets (FID when the features are Inception's).

    Heusel et al. 2017 eq. 6 (Dowson & Landau 1982): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}).
    """
    _check_pair(feats_a, feats_b, ("feats_a", "feats_b"))
    a, b = feats_a.detach().cpu().double(), feats_b.detach().cpu().double()
    mu_a, mu_b = a.mean(0), b.mean(0)  # (D,)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)  # (D, D), unbiased (N - 1)
    # (S_a S_b)^{1/2} is similar to (S_a^{1/2} S_b S_a^{1/2})^{1/2}, which is symmetric PSD, so its trace is the
    # sum of square roots of that matrix's eigenvalues: stable where scipy's sqrtm of a non-symmetric product is not.
    root_a = _sqrt_psd(s_a)  # (D, D)
    middle = root_a @ s_b @ root_a  # (D, D)
    middle = (middle + middle.T) / 2  # exact symmetry for eigh
    tr_covmean = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * tr_covmean
    return fd.item()


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / D + 1)^3, the KID kernel (Binkowski et al. 2018, sec. 3)."""
    return (x @ y.T / x.shape[1] + 1) ** 3  # (M, M)


def kernel_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """Kernel distance (KID, Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel, over random subsets.

    Returns (mean, std) over `subsets` subsets of size min(subset_size, len(a), len(b)); std is the population
    std of the subset estimates (as in the reference implementations), not a standard error.
    """
    _check_pair(feats_a, feats_b, ("feats_a", "feats_b"))
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    a, b = feats_a.detach().cpu().double(), feats_b.detach().cpu().double()
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]  # (m, D)
        y = b[torch.randperm(len(b), generator=generator)[:m]]  # (m, D)
        k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
        # MMD^2_u: within-set sums leave out the diagonal (i != j); the cross term uses all m^2 pairs.
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        estimates.append((within - 2 * k_xy.mean()).item())
    return statistics.fmean(estimates), statistics.pstdev(estimates)


def _as_float(feats: torch.Tensor) -> torch.Tensor:
    feats = feats.detach()
    return feats if feats.is_floating_point() else feats.float()


def _kth_neighbour_radii(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(N,) distance from each row to its k-th nearest other row (the row itself is the 0-th)."""
    radii = [torch.cdist(feats[i : i + chunk], feats).topk(k + 1, dim=1, largest=False).values[:, k]
             for i in range(0, len(feats), chunk)]  # each (chunk, N) -> (chunk,)
    return torch.cat(radii)


def _share_covered(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Share of query rows inside at least one ball (centres, radii), boundary included."""
    inside = [(torch.cdist(queries[i : i + chunk], centres) <= radii).any(1)  # (chunk, M) -> (chunk,)
              for i in range(0, len(queries), chunk)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3,
                     chunk: int = 2048) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eqs. 1-3) on k-NN balls, chunked.

    Precision: share of fakes inside at least one real ball (radius: distance to the k-th nearest other real).
    Recall: share of reals inside at least one fake ball (radii from the fakes). At most chunk x N distances
    are held at once.
    """
    _check_pair(real_feats, fake_feats, ("real_feats", "fake_feats"))
    if not 1 <= k < min(len(real_feats), len(fake_feats)):
        raise ValueError(f"k must be in [1, {min(len(real_feats), len(fake_feats)) - 1}] for these set sizes, got {k}")
    real, fake = _as_float(real_feats), _as_float(fake_feats)
    real_radii = _kth_neighbour_radii(real, k, chunk)  # (N_real,)
    fake_radii = _kth_neighbour_radii(fake, k, chunk)  # (N_fake,)
    precision = _share_covered(fake, real, real_radii, chunk)
    recall = _share_covered(real, fake, fake_radii, chunk)
    return precision, recall


def nearest_distances(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 1024,
                      exclude_self: bool = False) -> torch.Tensor:
    """(N,) Euclidean distance from each query row to its nearest reference row, chunked over queries.

    The search uses the float32 matmul form |q|^2 - 2 q.r + |r|^2 (fast on CPU); the distance to the neighbour
    it finds is then recomputed directly, so an exact copy reads 0 instead of float32 cancellation noise.
    exclude_self: queries and reference are the same set; row i is not its own neighbour.
    """
    _check_pair(queries, reference, ("queries", "reference"), min_rows=1)
    if exclude_self and len(queries) != len(reference):
        raise ValueError(f"exclude_self needs queries and reference to be the same set, "
                         f"got {len(queries)} and {len(reference)} rows")
    if exclude_self and len(reference) < 2:
        raise ValueError("exclude_self needs at least 2 rows")
    q, r = queries.detach().float(), reference.detach().float()
    r_sq = r.square().sum(1)  # (M,)
    out = []
    for i in range(0, len(q), chunk):
        q_chunk = q[i : i + chunk]  # (C, D)
        d_sq = q_chunk.square().sum(1, keepdim=True) - 2 * q_chunk @ r.T + r_sq  # (C, M)
        if exclude_self:
            rows = torch.arange(len(q_chunk))
            d_sq[rows, rows + i] = float("inf")
        nearest = d_sq.argmin(1)  # (C,)
        out.append((q_chunk - r[nearest]).norm(dim=1))  # (C,)
    return torch.cat(out)


def _flatten_images(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) images -> (N, C*H*W) float in [0, 1] when uint8, unchanged scale otherwise."""
    x = x.detach().flatten(1)
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def memorization(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
                 max_train: int | None = None) -> dict:
    """Copying check in pixel space: nearest-training-image L2 distances of generated samples vs. held-out images.

    A generator that copies its training images puts samples much closer to the training set than unseen test
    images are: ratio_median well below 1 and a large share_closer_than_test_p05 (the share is ~0.05 for a
    generator whose samples are as novel as test images). max_train: compare against a fixed random subset
    (seed 0) of that many training images, to bound the cost.
    """
    for name, x in (("samples", samples), ("train", train), ("test", test)):
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"{name} must be a non-empty (N, C, H, W) or (N, D) batch, got shape {tuple(x.shape)}")
    if max_train is not None and max_train < len(train):
        train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:max_train]]
    reference = _flatten_images(train)  # (M, D)
    sample_nn = nearest_distances(_flatten_images(samples), reference)  # (N,)
    test_nn = nearest_distances(_flatten_images(test), reference)  # (T,)
    quantiles = torch.tensor([0.05, 0.5])
    sample_p05, sample_median = torch.quantile(sample_nn, quantiles).tolist()
    test_p05, test_median = torch.quantile(test_nn, quantiles).tolist()
    if test_median > 0:
        ratio = sample_median / test_median
    else:
        ratio = float("nan") if sample_median == 0 else float("inf")
    return {
        "sample_nn_median": sample_median,
        "test_nn_median": test_median,
        "sample_nn_p05": sample_p05,
        "test_nn_p05": test_p05,
        "ratio_median": ratio,
        "share_closer_than_test_p05": (sample_nn < test_p05).float().mean().item(),
    }


def _model_device(model, x: torch.Tensor) -> torch.device:
    if isinstance(model, nn.Module):
        model.eval()
        param = next(model.parameters(), None)
        if param is not None:
            return param.device
    return x.device


def _standard_normal(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """eps ~ N(0, I) drawn on the CPU (reproducible across devices), then moved to like's device and dtype."""
    return torch.randn(shape, generator=generator).to(device=like.device, dtype=like.dtype)


@torch.inference_mode()
def iwae_log_likelihood(model, x: torch.Tensor, labels: torch.Tensor | None = None, k: int = 1000, chunk: int = 100,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """(N,) importance-weighted estimate of log p(x) in nats (Burda et al. 2016 eq. 8), a lower bound in expectation.

    log p(x) ~ logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k,  z_i ~ q(z|x), i = 1..k.
    k=1 is the one-sample ELBO; the bound tightens as k grows. Protocol the model must follow:
      model.encode(x, labels) -> (mu, logvar), each (N, L): diagonal Gaussian q(z|x)
      model.decode(z, labels) -> params, (N, C, H, W) or (N, D)
      model.log_likelihood(x, params) -> (N,) log p(x|z) in nats
    The prior is N(0, I). Importance samples are decoded `chunk` at a time (chunk x N rows per decode), so pass
    x in batches when N is large. Deterministic given `generator` (eps drawn on the CPU).
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1, got k={k}, chunk={chunk}")
    device = _model_device(model, x)
    x = x.to(device)
    labels = labels.to(device) if labels is not None else None
    mu, logvar = model.encode(x, labels)  # (N, L), (N, L)
    std = (0.5 * logvar).exp()  # (N, L)
    n, latent = mu.shape
    lse_chunks = []
    for start in range(0, k, chunk):
        c = min(chunk, k - start)
        eps = _standard_normal((c, n, latent), mu, generator)  # (c, N, L)
        z = mu + std * eps  # (c, N, L)
        x_rep = x.repeat(c, *([1] * (x.ndim - 1)))  # (c*N, ...), block j is a copy of x, matching z's layout
        labels_rep = labels.repeat(c, *([1] * (labels.ndim - 1))) if labels is not None else None
        params = model.decode(z.reshape(c * n, latent), labels_rep)  # (c*N, ...)
        log_px_z = model.log_likelihood(x_rep, params).reshape(c, n)  # (c, N)
        log_pz = -0.5 * (z.square() + LOG_2PI).sum(-1)  # (c, N), prior N(0, I)
        log_qz = -0.5 * (eps.square() + logvar + LOG_2PI).sum(-1)  # (c, N), q(z|x) at z = mu + std * eps
        log_w = (log_px_z + log_pz - log_qz).double()  # (c, N)
        lse_chunks.append(torch.logsumexp(log_w, 0))  # (N,)
    return torch.logsumexp(torch.stack(lse_chunks), 0) - math.log(k)  # (N,)


@torch.inference_mode()
def elbo(model, x: torch.Tensor, labels: torch.Tensor | None = None,
         generator: torch.Generator | None = None) -> dict:
    """One-sample ELBO (Kingma & Welling 2014 eq. 10), batch means in nats: {"elbo", "recon", "kl"}.

    recon = -log p(x|z), z ~ q(z|x) (one sample); kl = KL(q(z|x) || N(0, I)) in closed form (ibid. appendix B).
    Same model protocol as `iwae_log_likelihood`.
    """
    device = _model_device(model, x)
    x = x.to(device)
    labels = labels.to(device) if labels is not None else None
    mu, logvar = model.encode(x, labels)  # (N, L), (N, L)
    z = mu + (0.5 * logvar).exp() * _standard_normal(tuple(mu.shape), mu, generator)  # (N, L)
    recon = -model.log_likelihood(x, model.decode(z, labels))  # (N,)
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)  # (N,)
    recon_mean, kl_mean = recon.double().mean().item(), kl.double().mean().item()
    return {"elbo": -(recon_mean + kl_mean), "recon": recon_mean, "kl": kl_mean}


def summarize_seeds(values: list[float]) -> dict:
    """Mean and sample standard deviation of one metric over seeds (sd is 0 for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize_seeds needs at least one value (one per seed)")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values), "values": values}


def generate(model, n: int, seed: int, labels: torch.Tensor | None = None, chunk: int = 1000) -> torch.Tensor:
    """n uint8 samples in chunks (bounded memory); chunk i uses seed * 1_000_003 + i, so the result depends only
    on (n, seed, labels)."""
    parts = []
    for i, start in enumerate(range(0, n, chunk)):
        part_labels = None if labels is None else labels[start: start + chunk]
        parts.append(model.sample(min(chunk, n - start), labels=part_labels, seed=seed * 1_000_003 + i))
    return torch.cat(parts)


def score_samples(samples: torch.Tensor, reference_feats: torch.Tensor, evaluator, labels: torch.Tensor | None,
                  num_classes: int) -> dict:
    """FD, KID, precision/recall against the reference features, the evaluator's class histogram of the
    samples and, for conditional samples, the share it labels as the class that was asked for."""
    feats, predicted = evaluator.features_and_predictions(samples)  # (N, D), (N,): one pass of the evaluator
    kid, kid_sd = kernel_distance(feats, reference_feats)
    precision, recall = precision_recall(reference_feats, feats, k=3)
    scores = {"fd": frechet_distance(feats, reference_feats), "kid": kid, "kid_subset_sd": kid_sd,
              "precision": precision, "recall": recall,
              "class_histogram": torch.bincount(predicted, minlength=num_classes).tolist()}
    if labels is not None:
        scores["conditional_accuracy"] = (predicted == labels).double().mean().item()
    return scores


def evaluate_generator(model, ds, evaluator, n: int = 10_000, seeds: int = 1, seed: int = 0) -> dict:
    """Every sample-quality number of a generator on one scale: scores of n samples against n test images in the
    evaluator's feature space, mean ± sd over `seeds` sampling seeds, calibrated by FD(train vs test) and
    FD(uniform noise vs test), plus the memorization check. The result records its provenance."""
    n = min(n, len(ds.test_x))
    reference = ds.test_x[:n]
    reference_feats = evaluator.features(reference)  # (n, D)
    conditional = bool(getattr(model.cfg, "conditional", False))
    labels = torch.arange(n) % len(ds.classes) if conditional else None
    per_seed, first = [], None
    for s in range(seed, seed + seeds):
        samples = generate(model, n, s, labels)
        first = samples if first is None else first
        per_seed.append(score_samples(samples, reference_feats, evaluator, labels, len(ds.classes)))
    noise = torch.randint(0, 256, reference.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    train_subset = ds.train_x[torch.randperm(len(ds.train_x), generator=torch.Generator().manual_seed(seed))[:n]]
    result = {key: summarize_seeds([r[key] for r in per_seed]) for key in per_seed[0] if key != "class_histogram"}
    result.update({
        "class_histogram": per_seed[0]["class_histogram"],
        "calibration": {"fd_train_vs_test": frechet_distance(evaluator.features(train_subset), reference_feats),
                        "fd_noise_vs_test": frechet_distance(evaluator.features(noise), reference_feats)},
        "memorization": memorization(first, ds.train_x, reference),
        "provenance": {"evaluator": evaluator.hash, "evaluator_test_accuracy": evaluator.test_accuracy,
                       "n": n, "reference": f"{ds.name} test[:{n}]", "seeds": list(range(seed, seed + seeds))},
    })
    return result


EVAL_PREPARE_SEED = 0  # the one binarization (dequantization) of a test set that every VAE is scored on


def evaluation_inputs(model, x: torch.Tensor) -> torch.Tensor:
    """Raw test images -> the model-space images a VAE's likelihood is scored on: binarized (bernoulli) or
    dequantized (gaussian) once, with EVAL_PREPARE_SEED, never with a run's seed, so two runs, two seeds and
    `genforge evaluate` all score the same images (docs/decisions.md, VAE likelihoods)."""
    return model.prepare(x.to(model.device), generator=torch.Generator(model.device).manual_seed(EVAL_PREPARE_SEED))


def likelihood_metrics(model, ds, iwae_k: int, iwae_images: int, seed: int = 0, batch: int = 10) -> dict:
    """A VAE's test ELBO (all test images, one z each) and IWAE NLL (first iwae_images, k importance samples) in
    nats per image, and bits per dimension, on the fixed evaluation images (`evaluation_inputs`); `seed` draws
    only the estimators' latent noise.

    Every number is a discrete likelihood. bernoulli: the probability of the binary test images. gaussian: the
    8-bit images k in {0..255}^D through uniform dequantization x = (k + u) / 256 (Theis et al. 2016 sec. 3.1):
    P(k) = E_u p(x) / 256^D >= exp(E_u log p(x)) / 256^D (Jensen), so -log P(k) <= -log p(x) + D ln 256, the
    continuous density's NLL on [0, 1]^D plus D ln 256 (kept as *_continuous; that one can be negative).
    IWAE and ELBO are upper bounds on the discrete NLL in expectation. bits/dim = nats / (D ln 2)."""
    x_all = evaluation_inputs(model, ds.test_x)
    labels_all = ds.test_y.to(model.device) if model.cfg.conditional else None
    g = torch.Generator().manual_seed(seed)
    chunks = [slice(i, i + 1000) for i in range(0, len(x_all), 1000)]
    parts = [elbo(model, x_all[c], None if labels_all is None else labels_all[c], g) for c in chunks]
    mean = lambda key: sum(p[key] * len(x_all[c]) for p, c in zip(parts, chunks)) / len(x_all)  # noqa: E731
    m = min(iwae_images, len(x_all))
    log_px = torch.cat([iwae_log_likelihood(model, x_all[i: i + batch],
                                            None if labels_all is None else labels_all[i: i + batch],
                                            k=iwae_k, chunk=min(iwae_k, 100), generator=g)
                        for i in range(0, m, batch)])
    dims = math.prod(x_all.shape[1:])
    gaussian = model.cfg.likelihood == "gaussian"
    offset = dims * math.log(256) if gaussian else 0.0  # nats: density on [0, 1]^D -> mass of 8-bit pixels
    nll_iwae, test_elbo = -log_px.mean().item() + offset, mean("elbo") - offset
    result = {"likelihood": model.cfg.likelihood,
              "measure": ("nats per 8-bit image (dequantization bound: continuous NLL + D ln 256)" if gaussian else
                          "nats per binarized image (one fixed binarization)"),
              "dims": dims, "test_elbo": test_elbo, "test_recon": mean("recon") + offset, "test_kl": mean("kl"),
              "nll_iwae": nll_iwae, "nll_iwae_se": (log_px.std() / math.sqrt(m)).item() if m > 1 else 0.0,
              "bits_per_dim": nll_iwae / (dims * math.log(2)), "bits_per_dim_elbo": -test_elbo / (dims * math.log(2)),
              "iwae_k": iwae_k, "iwae_images": m, "prepare_seed": EVAL_PREPARE_SEED}
    if gaussian:
        result.update({"nll_iwae_continuous": nll_iwae - offset, "test_elbo_continuous": test_elbo + offset,
                       "dequantization_nats": offset})
    return result
