"""No lower bound in pyproject.toml allows a version with a published vulnerability that genforge's use reaches.

pip-audit's advisory databases are not reachable from every machine (not from this project's CI), so the fixed
versions are recorded here, each with its advisory; `make audit` runs pip-audit where its database answers. A bound
lowered below a recorded fix, or an installed version below one, fails here."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# distribution -> (the first fixed version, the advisory it fixes)
FIXED = {
    "torch": ("2.6", "CVE-2025-32434: torch.load(weights_only=True) could run code from a crafted file"),
    "pillow": ("10.3", "CVE-2024-28219: buffer overflow in _imagingcms"),
    "starlette": ("0.40", "CVE-2024-47874: multipart fields without a filename buffered without a bound"),
    "fastapi": ("0.115.3", "the first FastAPI that requires Starlette >= 0.40"),
    "python-multipart": ("0.0.18", "CVE-2024-53981: bytes around the boundaries logged one by one (CPU DoS)"),
    "h11": ("0.16", "CVE-2025-43859: lenient chunk terminators (request smuggling behind a proxy)"),
    "onnx": ("1.17", "CVE-2024-5187: path traversal when extracting a model archive"),
    "scikit-learn": ("1.5", "CVE-2024-5206: TfidfVectorizer kept the stop words it dropped"),
}


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {(req := Requirement(text)).name.lower(): req for text in found}


def lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=", ">")]
    return max(bounds, default=None)


@pytest.mark.parametrize("name", sorted(FIXED))
def test_no_lower_bound_allows_a_known_vulnerable_version(name):
    fixed, advisory = FIXED[name]
    req = requirements().get(name)
    assert req is not None, f"{name} ({advisory}) is no longer a direct requirement: drop it from FIXED, or keep it"
    bound = lower_bound(req)
    assert bound is not None and bound >= Version(fixed), \
        f"pyproject.toml asks for {req}, which allows versions below {fixed} ({advisory})"


@pytest.mark.parametrize("name", sorted(FIXED))
def test_the_installed_version_is_a_fixed_one(name):
    fixed, advisory = FIXED[name]
    try:
        installed = Version(version(name).split("+")[0])
    except PackageNotFoundError:
        pytest.fail(f"{name} is not installed; pip install -e '.[dev]'")
    assert installed >= Version(fixed), f"{name} {installed} is installed: upgrade to >= {fixed} ({advisory})"
