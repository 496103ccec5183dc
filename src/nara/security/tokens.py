"""Bearer-token validation: JWTs from the region's identity provider (OIDC discovery + JWKS) or the
built-in development identity provider.

Checks on every request: the signature with an allow-listed algorithm, a known issuer, the audience,
``exp``/``nbf`` (with a small clock-skew allowance) and a subject.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from nara.fhir.outcome import FhirError

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
CLOCK_SKEW_SECONDS = 60
JWKS_TTL_SECONDS = 300
VERIFIED_SECONDS = 60.0  # how long a verified token is trusted before its signature is checked again
VERIFIED_MAX = 10_000  # verified tokens remembered (the memory is dropped whole when it is full)


def unauthorized(message: str) -> FhirError:
    return FhirError(
        401,
        "login",
        message,
        headers={
            "WWW-Authenticate": f'Bearer realm="nara", error="invalid_token", error_description="{message[:120]}"'
        },
    )


@dataclass
class Issuer:
    """A trusted token issuer: either a static key set (development IdP) or an OIDC discovery URL."""

    issuer: str
    audience: str
    keys: KeySet | None = None
    discovery_url: str | None = None
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    _fetched_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key_set(self, force: bool = False) -> KeySet:
        if self.keys is not None and (
            self.discovery_url is None or (not force and time.time() - self._fetched_at < JWKS_TTL_SECONDS)
        ):
            return self.keys
        with self._lock:
            if self.discovery_url is None:
                raise unauthorized("No keys for issuer")
            try:
                conf = httpx.get(self.discovery_url, timeout=5).json()
                jwks = httpx.get(conf["jwks_uri"], timeout=5).json()
            except (httpx.HTTPError, ValueError, KeyError) as e:
                raise FhirError(
                    503, "transient", f"The identity provider's keys could not be fetched ({e.__class__.__name__})"
                ) from e
            self.keys = KeySet.import_key_set(jwks)
            self._fetched_at = time.time()
            return self.keys


class TokenValidator:
    """Validates bearer tokens; a token whose signature was verified is remembered for a short while.

    Checking an RSA signature and decoding the token cost about a tenth of a read by id, and a client
    sends the same token with every request until it expires. A verified token is therefore kept (by its
    exact text) for ``VERIFIED_SECONDS``: each use still checks its expiry and not-before time, and after
    that time the signature is verified again against the issuer's current keys (so a key the identity
    provider withdraws stops working within that time). Tokens that fail are never kept.
    """

    def __init__(self, issuers: list[Issuer]) -> None:
        self.issuers = {i.issuer: i for i in issuers}
        self._verified: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def recently_verified(self, token: str, margin: float = 1.0) -> bool:
        """Whether validating ``token`` within the next ``margin`` seconds would take its verified claims, asking
        no identity provider (the margin covers the moment between asking and validating)."""
        return self._kept_claims(token, time.time(), margin) is not None

    def validate(self, token: str) -> dict[str, Any]:
        now = time.time()
        claims = self._kept_claims(token, now)
        if claims is not None:
            _check_times(claims, now)
            return dict(claims)
        claims = self._verify(token)
        with self._lock:
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.clear()
            self._verified[token] = (now, claims)
        return dict(claims)

    def _kept_claims(self, token: str, now: float, margin: float = 0.0) -> dict[str, Any] | None:
        """The claims of ``token`` if its signature was verified less than ``VERIFIED_SECONDS`` (less ``margin``)
        before ``now``; None when it must be verified (again)."""
        hit = self._verified.get(token)
        return hit[1] if hit is not None and now - hit[0] < VERIFIED_SECONDS - margin else None

    def _verify(self, token: str) -> dict[str, Any]:
        if not token or token.count(".") != 2:
            raise unauthorized("The bearer token is not a JWT")
        header, claims = _peek(token)
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise unauthorized(f"Token algorithm {alg!r} is not allowed")
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise unauthorized("The token's issuer is not trusted")
        if alg not in issuer.algorithms:
            raise unauthorized(f"Token algorithm {alg!r} is not allowed for this issuer")
        try:
            verified = jwt.decode(token, issuer.key_set(), algorithms=list(issuer.algorithms))
        except (JoseError, ValueError):
            try:
                verified = jwt.decode(token, issuer.key_set(force=True), algorithms=list(issuer.algorithms))
            except (JoseError, ValueError) as e:
                raise unauthorized(f"The token's signature is not valid ({e.__class__.__name__})") from None
        claims = dict(verified.claims)
        _check_times(claims, time.time())
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if issuer.audience not in auds:
            raise unauthorized("The token is not meant for this server (audience)")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise unauthorized("The token has no subject")
        return claims


def _check_times(claims: dict[str, Any], now: float) -> None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float):
        raise unauthorized("The token has no expiry")
    if exp < now - CLOCK_SKEW_SECONDS:
        raise unauthorized("The token has expired")
    if isinstance(nbf, int | float) and nbf > now + CLOCK_SKEW_SECONDS:
        raise unauthorized("The token is not valid yet")


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before verification, only to choose the issuer's keys."""
    try:
        head, body, _sig = token.split(".")
        header = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise unauthorized("The bearer token cannot be read") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise unauthorized("The bearer token cannot be read")
    return header, claims
