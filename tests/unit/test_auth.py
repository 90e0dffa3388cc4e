"""Token authentication when joining: where the token is found, the opt-in, the pre-flight."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cluster import auth
from cluster.auth import (
    AUTH_MODE_ENV,
    TOKEN_ENV,
    TOKEN_PATH_ENV,
    TokenAuthError,
    default_token_path,
    gcs_target,
    join_error,
    looks_like_refusal,
    opt_in_to_token_auth,
    prepare_to_join,
    refusal_message,
    token_source,
)

TOKEN = "a" * 64
OTHER_TOKEN = "b" * 64


def write_default_token(home: Path, token: str = TOKEN) -> Path:
    path = home / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"  {token}\nsecond line is ignored\n")
    return path


# --- where the token comes from, in Ray's order --------------------------------------------


def test_the_token_comes_from_the_environment_first(tmp_path: Path) -> None:
    write_default_token(tmp_path, OTHER_TOKEN)
    source = token_source({TOKEN_ENV: f" {TOKEN}\n", "HOME": str(tmp_path)})
    assert source is not None
    assert (source.description, source.token) == (TOKEN_ENV, TOKEN)


def test_the_token_comes_from_the_default_file_under_home(tmp_path: Path) -> None:
    path = write_default_token(tmp_path)
    source = token_source({"HOME": str(tmp_path)})
    assert source is not None
    assert (source.description, source.token) == (str(path), TOKEN)  # first line, trimmed
    # An explicit home wins over HOME.
    assert token_source({"HOME": "/nonexistent"}, home=tmp_path) == source


def test_the_token_comes_from_the_file_ray_auth_token_path_names(tmp_path: Path) -> None:
    write_default_token(tmp_path, OTHER_TOKEN)
    named = tmp_path / "cluster-token"
    named.write_text(TOKEN + "\n")
    source = token_source({TOKEN_PATH_ENV: str(named), "HOME": str(tmp_path)})
    assert source is not None
    assert source.token == TOKEN
    assert source.description == f"{TOKEN_PATH_ENV}={named}"


def test_a_bad_token_path_is_not_skipped_for_the_default_file(tmp_path: Path) -> None:
    write_default_token(tmp_path)
    (tmp_path / "empty").write_text("\n")
    for named in (tmp_path / "missing", tmp_path / "empty"):
        assert token_source({TOKEN_PATH_ENV: str(named), "HOME": str(tmp_path)}) is None


def test_no_token_anywhere(tmp_path: Path) -> None:
    assert token_source({"HOME": str(tmp_path)}) is None
    assert token_source({TOKEN_ENV: "  \n", "HOME": str(tmp_path)}) is None  # blank


def test_without_home_ray_looks_in_the_working_directory() -> None:
    assert default_token_path({}) == Path(".ray/auth_token")
    assert default_token_path({"HOME": "/home/someone"}) == Path("/home/someone/.ray/auth_token")


def test_the_token_never_shows_in_a_repr(tmp_path: Path) -> None:
    source = token_source({TOKEN_ENV: TOKEN})
    assert TOKEN not in repr(source)


# --- the opt-in ---------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1:6379", "head.example.com:6379", "auto"])
def test_joining_with_a_token_opts_in(tmp_path: Path, address: str) -> None:
    write_default_token(tmp_path)
    environ = {"HOME": str(tmp_path)}
    source = opt_in_to_token_auth(address, environ)
    assert source is not None
    assert source.description == str(tmp_path / ".ray" / "auth_token")
    assert environ == {"HOME": str(tmp_path), AUTH_MODE_ENV: "token"}


@pytest.mark.parametrize("mode", ["disabled", "token", "TOKEN", ""])
def test_a_mode_already_set_is_left_alone(tmp_path: Path, mode: str) -> None:
    environ = {TOKEN_ENV: TOKEN, AUTH_MODE_ENV: mode, "HOME": str(tmp_path)}
    before = dict(environ)
    assert opt_in_to_token_auth("127.0.0.1:6379", environ) is None
    assert environ == before


@pytest.mark.parametrize("address", [None, "local"])
def test_a_local_start_is_left_to_ray(tmp_path: Path, address: str | None) -> None:
    environ = {TOKEN_ENV: TOKEN, "HOME": str(tmp_path)}
    assert opt_in_to_token_auth(address, environ) is None
    assert AUTH_MODE_ENV not in environ


def test_no_token_no_opt_in(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path)}
    assert opt_in_to_token_auth("127.0.0.1:6379", environ) is None
    assert environ == {"HOME": str(tmp_path)}


def test_a_cluster_that_takes_drivers_without_a_token_gets_none(tmp_path: Path) -> None:
    environ = {TOKEN_ENV: TOKEN, "HOME": str(tmp_path)}
    assert opt_in_to_token_auth("127.0.0.1:6379", environ, cluster_requires_token=False) is None
    assert AUTH_MODE_ENV not in environ
    assert opt_in_to_token_auth("127.0.0.1:6379", environ, cluster_requires_token=True)
    assert environ[AUTH_MODE_ENV] == "token"


def test_kubernetes_token_auth_is_left_to_ray(tmp_path: Path) -> None:
    environ = {TOKEN_ENV: TOKEN, "RAY_ENABLE_K8S_TOKEN_AUTH": "true", "HOME": str(tmp_path)}
    assert opt_in_to_token_auth("127.0.0.1:6379", environ) is None
    assert AUTH_MODE_ENV not in environ


# --- what the user is told ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:6379", "127.0.0.1:6379"),
        ("head-0.example.com:6380", "head-0.example.com:6380"),
        ("[::1]:6379", "[::1]:6379"),
        ("auto", None),
        ("ray://head:10001", None),
        ("head", None),
    ],
)
def test_only_gcs_addresses_get_a_pre_flight(address: str, target: str | None) -> None:
    assert gcs_target(address) == target


def test_a_refused_token_says_where_it_came_from_and_what_to_set(tmp_path: Path) -> None:
    environ = {TOKEN_ENV: TOKEN, AUTH_MODE_ENV: "token", "HOME": str(tmp_path)}
    message = refusal_message("10.0.0.5:6379", environ)
    assert "10.0.0.5:6379 refused" in message
    assert f"from {TOKEN_ENV}" in message
    for setting in (AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, str(default_token_path(environ))):
        assert setting in message
    assert TOKEN not in message


def test_a_missing_token_says_what_to_set(tmp_path: Path) -> None:
    message = refusal_message("10.0.0.5:6379", {"HOME": str(tmp_path)})
    assert "10.0.0.5:6379 requires token authentication" in message
    assert f"{AUTH_MODE_ENV}=token" in message and TOKEN_ENV in message
    disabled = refusal_message("10.0.0.5:6379", {AUTH_MODE_ENV: "disabled", TOKEN_ENV: TOKEN})
    assert f"{AUTH_MODE_ENV}='disabled' here" in disabled
    unreadable = refusal_message(
        "10.0.0.5:6379", {AUTH_MODE_ENV: "token", TOKEN_PATH_ENV: str(tmp_path / "gone")}
    )
    assert f"{TOKEN_PATH_ENV}={tmp_path / 'gone'} is unreadable" in unreadable


def test_a_failed_join_names_the_address_the_user_gave(tmp_path: Path) -> None:
    environ = {TOKEN_ENV: TOKEN, AUTH_MODE_ENV: "token", "HOME": str(tmp_path)}
    refused = ConnectionError("Failed to connect to Ray cluster at 192.168.1.20:6379")
    refused.__cause__ = RuntimeError(
        "Failed to connect to GCS. Last connection error: ... Unauthenticated: RPC error: "
        "InvalidAuthToken: Authentication token is missing or incorrect"
    )
    assert looks_like_refusal(refused)
    error = join_error("127.0.0.1:6379", refused, environ)
    assert isinstance(error, TokenAuthError)
    assert isinstance(error, ValueError)  # the CLI prints it as one line
    assert "127.0.0.1:6379" in str(error)

    unreachable = ConnectionError("Failed to connect to Ray cluster at 192.168.1.20:6379")
    unreachable.__cause__ = RuntimeError("Failed to connect to GCS: Timed out")
    assert not looks_like_refusal(unreachable)
    error = join_error("127.0.0.1:6379", unreachable, environ)
    assert type(error) is ConnectionError
    assert "127.0.0.1:6379" in str(error) and "192.168.1.20:6379" in str(error)


# --- the pre-flight, against stand-in GCSs that check tokens as Ray's does, or not at all ------


def serve_gcs(required_token: str | None) -> Any:
    """A gRPC server answering GetClusterId, only for ``required_token`` unless it is None."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    class Gcs(gcs_service_pb2_grpc.NodeInfoGcsServiceServicer):  # type: ignore[misc]
        def GetClusterId(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's name)
            metadata = dict(context.invocation_metadata())
            if required_token is not None and metadata.get("authorization") != (
                f"Bearer {required_token}"
            ):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken")
            return gcs_service_pb2.GetClusterIdReply(cluster_id=b"c" * 28)

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    gcs_service_pb2_grpc.add_NodeInfoGcsServiceServicer_to_server(Gcs(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def token_checking_gcs() -> Iterator[str]:
    """Takes only ``TOKEN``, as a GCS started with RAY_AUTH_MODE=token."""
    server, address = serve_gcs(TOKEN)
    try:
        yield address
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def open_gcs() -> Iterator[str]:
    """Takes any driver, as a GCS started without token authentication."""
    server, address = serve_gcs(None)
    try:
        yield address
    finally:
        server.stop(grace=None)


def test_the_pre_flight_tells_a_refusal_from_an_unreachable_cluster(
    token_checking_gcs: str, open_gcs: str
) -> None:
    assert auth._gcs_accepts(token_checking_gcs, TOKEN, timeout_s=5) is True
    assert auth._gcs_accepts(token_checking_gcs, OTHER_TOKEN, timeout_s=5) is False
    assert auth._gcs_accepts(token_checking_gcs, None, timeout_s=5) is False
    assert auth._gcs_accepts(open_gcs, None, timeout_s=5) is True
    # Nothing listens there: left to ray.init and its retries, not called a refusal.
    assert auth._gcs_accepts(f"127.0.0.1:{_closed_port()}", TOKEN, timeout_s=5) is None


def test_joining_with_the_right_token_opts_in_and_says_so(
    token_checking_gcs: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {TOKEN_ENV: TOKEN, "HOME": str(tmp_path)}
    with caplog.at_level(logging.INFO, logger="cluster.auth"):
        prepare_to_join(token_checking_gcs, environ)
    assert environ[AUTH_MODE_ENV] == "token"
    opt_ins = [r for r in caplog.records if "token authentication" in r.getMessage()]
    assert len(opt_ins) == 1 and opt_ins[0].levelno == logging.INFO
    assert TOKEN_ENV in opt_ins[0].getMessage() and TOKEN not in caplog.text


def test_a_cluster_without_token_auth_is_joined_without_a_token(
    open_gcs: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token left in ~/.ray/auth_token by a local run is not sent where it is not wanted."""
    write_default_token(tmp_path)
    environ = {"HOME": str(tmp_path)}
    with caplog.at_level(logging.INFO, logger="cluster.auth"):
        prepare_to_join(open_gcs, environ)
    assert environ == {"HOME": str(tmp_path)}
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


@pytest.mark.parametrize(
    "environ",
    [
        {TOKEN_ENV: OTHER_TOKEN},  # opted in, with the wrong token
        {},  # no token at all
        {TOKEN_ENV: TOKEN, AUTH_MODE_ENV: "disabled"},  # a token, but not sent
    ],
    ids=["wrong-token", "no-token", "mode-disabled"],
)
def test_joining_a_cluster_that_refuses_fails_at_once(
    token_checking_gcs: str, tmp_path: Path, environ: dict[str, str]
) -> None:
    environ = dict(environ, HOME=str(tmp_path))
    with pytest.raises(TokenAuthError, match=token_checking_gcs) as raised:
        prepare_to_join(token_checking_gcs, environ)
    assert AUTH_MODE_ENV in str(raised.value) and TOKEN_ENV in str(raised.value)


def test_token_mode_without_a_token_fails_before_asking(tmp_path: Path) -> None:
    environ = {AUTH_MODE_ENV: "token", "HOME": str(tmp_path)}
    with pytest.raises(TokenAuthError, match="no authentication token"):
        prepare_to_join(f"127.0.0.1:{_closed_port()}", environ)


# --- the suite's own home -----------------------------------------------------------------------


def test_the_suite_runs_under_a_temporary_home() -> None:
    real_home = os.environ["BOTTLETUNE_TEST_REAL_HOME"]
    assert Path.home() != Path(real_home)
    assert Path.home().parent == Path(tempfile.gettempdir())
    assert Path.home().name.startswith("bt-home-")
    assert default_token_path(os.environ) == Path.home() / ".ray" / "auth_token"


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
