"""Membership inference against a classifier: how well can an attacker tell the examples it trained on (members)
from examples of the same distribution it never saw (non-members, the test split)?

Two black-box attacks, scored by the ROC of their per-example scores (higher: more likely a member):
  loss         the negative cross-entropy of the true class (Yeom et al. 2018): members are fit better;
  mentr-class  the modified prediction entropy of Song and Mittal 2021 (eq. 3), standardized per class with the
               mean and standard deviation of the same score on a separate set of non-members: their class-dependent
               thresholds, which remove the part of the score that comes from how hard a class is.
For each: the AUC, the true positive rate at a 0.1% and a 1% false positive rate, and the lower bound on epsilon
the attack implies (Jagielski et al. 2020): an (epsilon, delta)-DP model admits no test with
TPR > e^epsilon FPR + delta, so, with the threshold chosen on one half of the examples and 95% Clopper-Pearson bounds
on the other half, epsilon >= log((TPR_low - delta) / FPR_high) (and the same for the complementary rates).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genforge.errors import GenforgeError
from genforge.evaluate.classification import predict_proba
from genforge.train.privacy import default_delta

FPRS = (0.001, 0.01)


@torch.inference_mode()
def attack_scores(model, x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
    """Per example: the loss attack's score and the (unstandardized) modified entropy's, both higher for members."""
    p = predict_proba(model, x).double().clamp(1e-12, 1 - 1e-12)
    y = y.cpu()
    p_y = p[torch.arange(len(y)), y]
    loss = -torch.log(p_y)
    others = -(p * torch.log(1 - p)).sum(1) + p_y * torch.log(1 - p_y)  # sum over i != y of -p_i log(1 - p_i)
    mentr = -(1 - p_y) * torch.log(p_y) + others
    return {"loss": (-loss).numpy(), "mentr": (-mentr).numpy()}


def class_standardized(score: np.ndarray, y: np.ndarray, reference: np.ndarray, y_reference: np.ndarray,
                       classes: int) -> np.ndarray:
    """score minus the mean of its class's reference (non-member) scores, over their standard deviation."""
    out = np.empty_like(score)
    for c in range(classes):
        ref = reference[y_reference == c]
        mean, sd = (ref.mean(), ref.std() + 1e-12) if len(ref) > 1 else (0.0, 1.0)
        out[y == c] = (score[y == c] - mean) / sd
    return out


def roc_summary(members: np.ndarray, non_members: np.ndarray) -> dict:
    """AUC and the TPR at each FPR of FPRS (the best TPR among thresholds whose FPR does not exceed it)."""
    # deferred: scikit-learn's import takes 2 s or more, paid only on this path
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    scores = np.r_[members, non_members]
    fpr, tpr, _ = roc_curve(labels, scores)
    out = {"auc": float(roc_auc_score(labels, scores))}
    for target in FPRS:
        out[f"tpr_at_{target:.1%}_fpr"] = float(tpr[fpr <= target].max()) if (fpr <= target).any() else 0.0
    return out


def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    # deferred: scipy.stats takes 2 s or more to import, paid only on this path
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def epsilon_lower_bound(members: np.ndarray, non_members: np.ndarray, delta: float, seed: int = 0,
                        confidence: float = 0.95) -> float:
    """The epsilon any (epsilon, delta) guarantee of this model must exceed for the attack's rates to be possible:
    the threshold with the largest bound on a random half, the bound (Clopper-Pearson at `confidence`) on the other
    half. 0 when the attack shows nothing."""
    g = np.random.default_rng(seed)
    m, n = g.permutation(len(members)), g.permutation(len(non_members))
    fit_m, test_m = members[m[: len(m) // 2]], members[m[len(m) // 2 :]]
    fit_n, test_n = non_members[n[: len(n) // 2]], non_members[n[len(n) // 2 :]]

    def bound(tp: int, fp: int, pos: int, neg: int, alpha: float) -> float:
        tpr_lo, _ = _clopper_pearson(tp, pos, alpha)
        _, fpr_hi = _clopper_pearson(fp, neg, alpha)
        tnr_lo, _ = _clopper_pearson(neg - fp, neg, alpha)
        _, fnr_hi = _clopper_pearson(pos - tp, pos, alpha)
        values = [math.log((tpr_lo - delta) / fpr_hi) if tpr_lo > delta else 0.0,
                  math.log((tnr_lo - delta) / fnr_hi) if tnr_lo > delta else 0.0]
        return max(0.0, *values)

    thresholds = np.unique(np.r_[fit_m, fit_n])
    if len(thresholds) > 512:
        thresholds = np.quantile(thresholds, np.linspace(0, 1, 512))
    best, best_value = thresholds[0], -1.0
    for t in thresholds:  # chosen on the first half, with the point estimates' bound at 50% confidence
        value = bound(int((fit_m >= t).sum()), int((fit_n >= t).sum()), len(fit_m), len(fit_n), 0.5)
        if value > best_value:
            best, best_value = t, value
    return bound(int((test_m >= best).sum()), int((test_n >= best).sum()), len(test_m), len(test_n),
                 1 - confidence)


def membership_audit(model, members: tuple[torch.Tensor, torch.Tensor], non_members: tuple[torch.Tensor, torch.Tensor],
                     reference: tuple[torch.Tensor, torch.Tensor], classes: int, delta: float) -> dict:
    """Both attacks on (members, non-members), the class statistics of mentr-class taken on `reference` (other
    non-members)."""
    s_m, s_n, s_r = (attack_scores(model, x, y) for x, y in (members, non_members, reference))
    y_m, y_n, y_r = (t[1].cpu().numpy() for t in (members, non_members, reference))
    attacks = {"loss": (s_m["loss"], s_n["loss"]),
               "mentr-class": (class_standardized(s_m["mentr"], y_m, s_r["mentr"], y_r, classes),
                               class_standardized(s_n["mentr"], y_n, s_r["mentr"], y_r, classes))}
    result = {}
    for name, (m, n) in attacks.items():
        result[name] = {**roc_summary(m, n), "epsilon_lower_bound": epsilon_lower_bound(m, n, delta)}
    return result


def audit_run(loaded, n: int = 1000, seed: int = 0) -> dict:
    """A classifier run against both attacks: n of its own training examples (members) against n test examples
    (non-members), the rest of the test split as mentr-class's reference. With the epsilon the run accounted, if it
    was trained privately."""
    if "classify" not in loaded.task.verbs:
        raise GenforgeError(f"{loaded.path.name} is a {loaded.config.model.kind} model: the membership audit attacks "
                            f"classifiers")
    task, cfg = loaded.task, loaded.config
    ds = task.dataset(cfg)
    data = task.prepare(cfg, ds, torch.device("cpu"))  # the run's own training split, as it was cut
    g = torch.Generator().manual_seed(seed)
    members = torch.randperm(len(data.x), generator=g)[:n]
    order = torch.randperm(len(ds.test_y), generator=g)
    k = min(n, len(order) // 2)
    if len(members) < 20 or k < 20:
        raise GenforgeError(f"the audit needs at least 20 members and 40 test examples; {loaded.path.name} has "
                            f"{len(data.x)} and {len(order)}")
    privacy = loaded.summary.get("privacy")
    delta = privacy["delta"] if privacy else default_delta(len(data.x))
    attacks = membership_audit(loaded.model, (data.x[members], data.y[members]),
                               (ds.test_x[order[:k]], ds.test_y[order[:k]]),
                               (ds.test_x[order[k:]], ds.test_y[order[k:]]), len(ds.classes), delta)
    return {"run": loaded.path.name, "members": len(members), "non_members": k, "delta": delta,
            "accounted_epsilon": privacy["epsilon"] if privacy else None, "attacks": attacks}
