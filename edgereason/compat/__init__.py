"""Every use of a third-party library's private names, in one checked layer.

edgereason leans on a few internals that the libraries do not promise to keep (TRL's fused-head
switch and clipping attributes, llama-cpp-python's context and model handles, transformers'
quantizer attribute). Each module here wraps one library's: the rest of the package calls these
functions, and never a private name itself (`scripts/check_private_names.py`, run by `make lint`
and the fast tests, refuses one outside this folder). On import each module checks that the pinned
contract still holds (the names exist, the attributes are still set where we set them) and fails
with a `ContractError` naming the library and its version, so an upgrade breaks in one clear place
instead of one failure at a time.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


class ContractError(RuntimeError):
    """A third-party internal edgereason relies on is gone or changed in the installed version."""


def require(condition: bool, package: str, what: str) -> None:
    """Raise a ContractError naming `package`'s installed version when `condition` does not hold."""
    if condition:
        return
    try:
        installed = version(package)
    except PackageNotFoundError:
        installed = "not installed"
    raise ContractError(f"{package} {installed}: {what}. edgereason relies on it (edgereason/compat/); "
                        "install the version pyproject.toml pins, or update edgereason/compat for this one.")
