"""Token authentication when joining a Ray cluster: opting in, and failing fast when refused.

Ray 2.60 turns token authentication on by itself for a local ``ray.init()``
(always, writing a token file if there is none), for ``ray start --head`` and
``address="auto"`` (when a token is found), but never for a driver that
joins ``host:port`` (``ray._private.worker.init``): that one sends no token
unless ``RAY_AUTH_MODE=token`` is set. A cluster that refuses it is retried
``RAY_NUM_REDIS_GET_RETRIES`` (20) times a second apart
(``ray._private.node.Node._init_gcs_client``), before Ray reports "Failed to
connect" at an address it resolved itself (loopback becomes the machine's
outward address).

Here a joining driver asks the cluster, in milliseconds, whether it takes a
driver without a token; if not, and a token is at hand, the driver opts in
for itself. It then asks whether the cluster accepts what the driver will
send: a refusal becomes a ``TokenAuthError`` that names the address the user
gave and the settings that fix it.

Where Ray finds the token (``AuthenticationTokenLoader::TryLoadTokenFromSources``
in Ray's C++ core), first match wins:

1. ``RAY_AUTH_TOKEN``, trimmed of whitespace;
2. the first line of the file ``RAY_AUTH_TOKEN_PATH`` names (an unreadable or
   empty file is an error, not a fall-through);
3. a Kubernetes service-account token, only with ``RAY_ENABLE_K8S_TOKEN_AUTH``;
4. the first line of ``$HOME/.ray/auth_token`` (``./.ray/auth_token`` without HOME).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
K8S_TOKEN_AUTH_ENV = "RAY_ENABLE_K8S_TOKEN_AUTH"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"
"""The token file relative to the home directory, where ``ray start`` writes one."""

PREFLIGHT_TIMEOUT_S = 5.0
"""How long the pre-flight question may take; a cluster that does not answer
by then is left to ``ray.init`` and its own retries."""

# Ray's C++ client interceptor sends the token in this gRPC metadata entry
# (AUTHORIZATION_HEADER_NAME and AUTHORIZATION_BEARER_PREFIX in
# ray._private.authentication.authentication_constants).
_AUTHORIZATION_METADATA = "authorization"
_BEARER_PREFIX = "Bearer "
# What Ray's GCS client logs and raises when the cluster refuses the token.
_REFUSAL_MARKERS = ("InvalidAuthToken", "Unauthenticated", "UNAUTHENTICATED")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}$")


class TokenAuthError(ValueError):
    """The cluster refused this driver's token, or needs one the driver does not have."""


@dataclass(frozen=True)
class TokenSource:
    """Where Ray will find this process's authentication token.

    Attributes:
        description: What a user is told: ``RAY_AUTH_TOKEN``,
            ``RAY_AUTH_TOKEN_PATH=<file>`` or the default file's path.
        token: The token itself. Kept out of ``repr``; never log or show it.
    """

    description: str
    token: str = field(repr=False)


def default_token_path(
    environ: Mapping[str, str], home: str | os.PathLike[str] | None = None
) -> Path:
    """The token file Ray reads last: ``$HOME/.ray/auth_token``.

    Args:
        environ: The environment Ray reads (HOME is taken from it, as Ray's
            C++ core does, not from the password database).
        home: The home directory to use instead of ``environ["HOME"]``.
    """
    home_dir = environ.get("HOME", "") if home is None else os.fspath(home)
    return Path(home_dir or ".") / DEFAULT_TOKEN_FILE


def token_source(
    environ: Mapping[str, str], home: str | os.PathLike[str] | None = None
) -> TokenSource | None:
    """Finds the token Ray would send, in Ray's order, or None if there is none.

    A Kubernetes service-account token (``RAY_ENABLE_K8S_TOKEN_AUTH``) is not
    looked for: with that setting bottletune leaves authentication to Ray.

    Args:
        environ: The environment Ray reads.
        home: The home directory to use instead of ``environ["HOME"]``.
    """
    if environ.get(TOKEN_ENV):
        token = environ[TOKEN_ENV].strip()
        return TokenSource(TOKEN_ENV, token) if token else None
    named_file = environ.get(TOKEN_PATH_ENV)
    if named_file:
        # Ray stops here too: a bad RAY_AUTH_TOKEN_PATH is not skipped.
        token = _first_line(Path(named_file))
        return TokenSource(f"{TOKEN_PATH_ENV}={named_file}", token) if token else None
    path = default_token_path(environ, home)
    token = _first_line(path)
    return TokenSource(str(path), token) if token else None


def opt_in_to_token_auth(
    address: str | None,
    environ: MutableMapping[str, str],
    home: str | os.PathLike[str] | None = None,
    *,
    cluster_requires_token: bool | None = None,
) -> TokenSource | None:
    """Sets ``RAY_AUTH_MODE=token`` in ``environ`` for a driver joining a cluster with a token.

    Nothing changes for a Ray this process starts (``address`` None or
    "local": Ray decides that itself), when ``RAY_AUTH_MODE`` is already set
    (to anything), with Kubernetes token auth, when no token is found, or
    when the cluster is known to take drivers without one: a driver in token
    mode refuses the calls such a cluster's workers make back to it (actors
    die as soon as they are created).

    Args:
        address: What ``connect`` was given: None, "local", "auto", "host:port"
            or "ray://host:port".
        environ: The environment to change (``os.environ`` for this process).
        home: The home directory to use instead of ``environ["HOME"]``.
        cluster_requires_token: Whether the cluster refused a driver without a
            token; None when it was not asked or did not answer.

    Returns:
        Where the token comes from when the mode was set; None when nothing changed.
    """
    if address in (None, "local") or AUTH_MODE_ENV in environ or _k8s_token_auth(environ):
        return None
    if cluster_requires_token is False:
        return None
    source = token_source(environ, home)
    if source is None:
        return None
    environ[AUTH_MODE_ENV] = "token"
    return source


def gcs_target(address: str) -> str | None:
    """The ``host:port`` to ask before joining, or None where Ray resolves the address itself.

    "auto" (``RAY_ADDRESS`` or the last local cluster) and Ray Client
    addresses (``ray://``, another server and protocol) are not asked.
    """
    return address if _HOST_PORT.match(address) else None


def refusal_message(
    address: str, environ: Mapping[str, str], home: str | os.PathLike[str] | None = None
) -> str:
    """What to tell a user whose driver the cluster at ``address`` refused.

    Args:
        address: The address as the user gave it.
        environ: The driver's environment (which token it sent, if any).
        home: The home directory to use instead of ``environ["HOME"]``.
    """
    token_file = default_token_path(environ, home)
    token_fix = (
        f"{TOKEN_ENV} to the cluster's token or write it to {token_file} "
        f"(or to a file named by {TOKEN_PATH_ENV})"
    )
    mode = environ.get(AUTH_MODE_ENV)
    source = token_source(environ, home)
    if mode is not None and mode.lower() == "token":
        if source is None:
            named_file = environ.get(TOKEN_PATH_ENV)
            unreadable = (
                f" ({TOKEN_PATH_ENV}={named_file} is unreadable or empty)" if named_file else ""
            )
            return (
                f"{AUTH_MODE_ENV}=token but this driver has no authentication token{unreadable} "
                f"to join the Ray cluster at {address}: set {token_fix}"
            )
        return (
            f"the Ray cluster at {address} refused this driver's authentication token "
            f"(from {source.description}): set {token_fix}, and keep {AUTH_MODE_ENV}=token"
        )
    mode_note = f" ({AUTH_MODE_ENV}={mode!r} here)" if mode is not None else ""
    return (
        f"the Ray cluster at {address} requires token authentication and this driver sent "
        f"no token{mode_note}: set {AUTH_MODE_ENV}=token, and {token_fix}"
    )


def looks_like_refusal(error: BaseException) -> bool:
    """Whether a failed ``ray.init`` (or what caused it) was the cluster refusing the token."""
    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return any(marker in str(cause) for cause in chain for marker in _REFUSAL_MARKERS)


def join_error(
    address: str, error: BaseException, environ: Mapping[str, str] | None = None
) -> Exception:
    """What to raise when ``ray.init`` could not join ``address``, naming it as the user gave it.

    Ray's own message names the address it resolved (a loopback address
    becomes the machine's outward one), which the user never typed.

    Args:
        address: The address the user gave.
        error: What ``ray.init`` raised.
        environ: The driver's environment (``os.environ`` by default).

    Returns:
        A ``TokenAuthError`` when the cluster refused the token, else a
        ``ConnectionError``; raise it ``from error``.
    """
    environ = os.environ if environ is None else environ
    if looks_like_refusal(error):
        return TokenAuthError(refusal_message(address, environ))
    return ConnectionError(f"could not join the Ray cluster at {address}: {error}")


def prepare_to_join(address: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Opts this driver in to token authentication where the cluster wants it, then checks.

    Call it right before ``ray.init(address=...)``. A ``host:port`` cluster is
    asked (in milliseconds) whether it takes a driver without a token; when
    it does not and a token is at hand, ``RAY_AUTH_MODE=token`` is set in the
    environment (logged at INFO, with where the token comes from) and an
    already imported Ray reads it again. For "auto" and ``ray://`` addresses,
    which are not asked, a token at hand is enough.

    Args:
        address: The address the user gave.
        environ: The process environment (``os.environ``; another mapping in tests).

    Raises:
        TokenAuthError: the cluster refused the token this driver will send,
            or needs one and none is set; the message names ``address`` and
            what to set.
    """
    environ = os.environ if environ is None else environ
    target = gcs_target(address)
    requires_token: bool | None = None
    if (
        target is not None
        and AUTH_MODE_ENV not in environ
        and not _k8s_token_auth(environ)
        and token_source(environ) is not None
    ):
        accepted = _gcs_accepts(target, None, PREFLIGHT_TIMEOUT_S)
        requires_token = None if accepted is None else not accepted
    source = opt_in_to_token_auth(address, environ, cluster_requires_token=requires_token)
    if source is not None:
        logger.info(
            "joining the Ray cluster at %s with token authentication: %s=token is set for "
            "this process (the token comes from %s)",
            address,
            AUTH_MODE_ENV,
            source.description,
        )
        if environ is os.environ:
            _refresh_ray_config()
    elif requires_token is False:
        logger.debug("the Ray cluster at %s takes drivers without a token; none is sent", address)
    _check_cluster_accepts_token(address, environ)


def _check_cluster_accepts_token(address: str, environ: Mapping[str, str]) -> None:
    target = gcs_target(address)
    mode = (environ.get(AUTH_MODE_ENV) or "disabled").lower()
    if target is None or mode not in ("disabled", "token") or _k8s_token_auth(environ):
        return
    source = token_source(environ) if mode == "token" else None
    if mode == "token" and source is None:
        raise TokenAuthError(refusal_message(address, environ))
    token = None if source is None else source.token
    if _gcs_accepts(target, token, PREFLIGHT_TIMEOUT_S) is False:
        raise TokenAuthError(refusal_message(address, environ))


def _gcs_accepts(target: str, token: str | None, timeout_s: float) -> bool | None:
    """Asks the GCS at ``target`` for its cluster ID, sending ``token`` as Ray would.

    Returns:
        True if it answered, False if it refused the token (or its absence),
        None if it could not be reached (yet) or answered anything else:
        that is left to ``ray.init`` and its retries.
    """
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = None if token is None else [(_AUTHORIZATION_METADATA, _BEARER_PREFIX + token)]
    # No HTTP proxy, as Ray's own GCS client (grpc_enable_http_proxy=false).
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            request = gcs_service_pb2.GetClusterIdRequest()  # type: ignore[attr-defined]
            stub.GetClusterId(request, timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            logger.debug("pre-flight to the GCS at %s: %s", target, code)
            return False if code == grpc.StatusCode.UNAUTHENTICATED else None
    return True


def _refresh_ray_config() -> None:
    """Makes an already imported Ray read ``RAY_AUTH_MODE`` again.

    Ray's core caches its RAY_* settings when first used; setting the variable
    afterwards is not seen. Ray's own opt-in (``_enable_token_auth`` in
    ray._private.authentication.authentication_token_setup) re-reads them
    the same way.
    """
    if "ray._raylet" not in sys.modules:
        return  # Ray reads the environment when it is imported
    # Not in the stubs Ray ships for _raylet.
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _k8s_token_auth(environ: Mapping[str, str]) -> bool:
    return environ.get(K8S_TOKEN_AUTH_ENV, "").strip().lower() in ("1", "true")


def _first_line(path: Path) -> str:
    """The first line of ``path``, trimmed (as Ray reads a token file); "" if unreadable."""
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            return file.readline().strip()
    except OSError:
        return ""
